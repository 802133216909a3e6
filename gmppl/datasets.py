"""Bundled data with no network: scikit-learn's digits and moons, and targets with known densities."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gmppl.errors import DataError

log = logging.getLogger(__name__)


def moons(n: int = 2000, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Two interleaving half circles (``sklearn.datasets.make_moons``), float32 ``(n, 2)``."""
    from sklearn.datasets import make_moons

    return make_moons(n, noise=noise, random_state=seed)[0].astype(np.float32)


def digits() -> np.ndarray:
    """scikit-learn's 1797 8x8 digit images as pixel/16 in [0, 1], float32 ``(1797, 64)``."""
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


def digit_labels() -> np.ndarray:
    """The class (0-9) of each of scikit-learn's 1797 digits, in the order of :func:`digits`."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def ring_centers(modes: int = 8, radius: float = 2.0) -> np.ndarray:
    """Centres of the ``modes``-Gaussian ring."""
    a = 2 * np.pi * np.arange(modes) / modes
    return np.stack([radius * np.cos(a), radius * np.sin(a)], 1)


def grid_centers(side: int = 5, spacing: float = 2.0) -> np.ndarray:
    """Centres of the ``side**2``-Gaussian grid, centred at the origin."""
    c = (np.arange(side) - (side - 1) / 2) * spacing
    return np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)


def mixture(centers: np.ndarray, std: float, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` draws from the equal-weight mixture of ``N(c, std^2 I)`` over ``centers``."""
    rng = np.random.default_rng(seed)
    k = rng.integers(len(centers), size=n)
    return (centers[k] + std * rng.normal(size=(n, centers.shape[1]))).astype(np.float32)


def ring(n: int = 2000, *, modes: int = 8, radius: float = 2.0, std: float = 0.02, seed: int = 0) -> np.ndarray:
    """The 8-Gaussian ring (radius 2, std 0.02): the mode-coverage benchmark of GAN papers."""
    return mixture(ring_centers(modes, radius), std, n, seed=seed)


def grid(n: int = 2000, *, side: int = 5, spacing: float = 2.0, std: float = 0.02, seed: int = 0) -> np.ndarray:
    """The 25-Gaussian grid (spacing 2, std 0.02)."""
    return mixture(grid_centers(side, spacing), std, n, seed=seed)


BUNDLED: dict[str, Callable[[], np.ndarray]] = {"moons": moons, "digits": digits, "ring": ring, "grid": grid}


def load_arrays(spec: str) -> np.ndarray | dict[str, np.ndarray]:
    """Like :func:`load`, but a .npz holding several arrays comes back as a mapping of them (the observed data
    and the inputs of a conditional model, by name)."""
    path = Path(spec)
    if spec not in BUNDLED and path.suffix.lower() == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if len(z.files) > 1:
                    return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{spec}: cannot be read as .npz data ({type(e).__name__}: {e}).") from e
    return load(spec)


def load(spec: str, *, key: str | None = None) -> np.ndarray:
    """Data from a bundled name (moons, digits, ring, grid) or a file (.npy, .npz, .csv); never unpickles."""
    if spec in BUNDLED:
        return BUNDLED[spec]()
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--data {spec!r}: no such file, and not one of the bundled sets {sorted(BUNDLED)}.")
    suffix = path.suffix.lower()
    try:
        return _load_file(path, spec, suffix, key)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{spec}: cannot be read as {suffix} data ({type(e).__name__}: {e}).") from e


def _load_file(path: Path, spec: str, suffix: str, key: str | None) -> np.ndarray:
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = z.files
            if not names:
                raise DataError(f"{spec}: the .npz holds no arrays.")
            if key is not None and key not in names:
                raise DataError(f"{spec}: no array {key!r}; it holds {names}.")
            return z[key or names[0]]
    if suffix in (".csv", ".txt"):
        return _read_text(path, "," if suffix == ".csv" else None)
    raise DataError(f"{spec}: unknown data format {suffix!r}; use .npy, .npz or .csv.")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_text(path: Path, delimiter: str | None) -> np.ndarray:
    """A numeric table; a first row that is not all numbers is a header (column names) and is skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read as text ({type(e).__name__}: {e}).") from e
    fields = [v.strip() for v in (first.split(delimiter) if delimiter else first.split())]
    header = any(v and not _is_number(v) for v in fields)
    if header:
        log.info("%s: skipping the header row %s", path, first.strip())
    try:
        return np.loadtxt(path, delimiter=delimiter, dtype=np.float32, ndmin=2, skiprows=int(header))
    except ValueError as e:
        raise DataError(
            f"{path}: {e}. Every row (after an optional header row of column names) must hold numbers only, "
            f"{'comma' if delimiter else 'whitespace'}-separated, the same count in each row."
        ) from e
