"""Validation of user data: one place that turns numpy/torch/JAX arrays into checked numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gmppl.errors import BackendError, DataError

#: Seeds are ``0 <= seed < 2**32``: what numpy's generators, torch and JAX's keys all take as they are.
SEED_LIMIT = 2**32


def to_numpy(x: Any) -> np.ndarray:
    """Any array (numpy, torch on any device, JAX, nested lists) as a numpy array."""
    if hasattr(x, "detach"):  # torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_data(data: Any, *, name: str = "data") -> np.ndarray:
    """Return ``data`` as a floating numpy array with examples on axis 0, or raise `DataError`.

    Refuses empty data, non-numeric dtypes, NaN/inf and scalars, before any work starts.
    """
    if data is None:
        raise DataError(f"{name} is None: pass an array with examples on axis 0.")
    try:
        arr = to_numpy(data)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise DataError(f"{name} could not be read as an array ({type(data).__name__}): {e}") from e
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"{name} has dtype {arr.dtype}; gmppl needs numbers (float32 or float64).")
    if arr.ndim == 0:
        raise DataError(f"{name} is a scalar; pass an array with examples on axis 0, e.g. shape (n, d).")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); pass at least one example on axis 0.")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError(f"{name} is complex ({arr.dtype}); gmppl needs real numbers.")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise DataError(
            f"{name} contains {int(bad.sum())} NaN/inf value(s), the first at index {tuple(int(i) for i in idx)}; "
            "remove or impute them before fitting."
        )
    return arr


def check_inputs(inputs: Any, n: int | None, *, name: str = "inputs") -> dict[str, np.ndarray]:
    """Inputs (covariates, labels, context) as checked numpy arrays with ``n`` rows each (any ``n`` when None).

    Integer and boolean inputs keep their dtype (labels index embeddings); other numbers become floats.
    """
    if inputs is None:
        return {}
    if not isinstance(inputs, Mapping):
        raise DataError(f"{name} must be a mapping of named arrays, e.g. {{'y': labels}}; got {type(inputs).__name__}.")
    out = {}
    for key, value in inputs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise DataError(f"{name}: {key!r} is not a valid keyword name for the program.")
        arr = to_numpy(value)
        if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
            if arr.ndim == 0 or arr.shape[0] == 0:
                raise DataError(f"{name}[{key!r}] has shape {arr.shape}; pass one row per example on axis 0.")
        else:
            arr = check_data(arr, name=f"{name}[{key!r}]")
        out[key] = arr
    rows = {k: v.shape[0] for k, v in out.items()}
    expected = n if n is not None else (next(iter(rows.values())) if rows else None)
    bad = {k: r for k, r in rows.items() if r != expected}
    if bad:
        raise DataError(
            f"{name} must have one row per example ({expected}), but {', '.join(f'{k!r} has {r}' for k, r in bad.items())}."
        )
    return out


def split_data(data: Any, observed: str, *, name: str = "data") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``data`` as ``(x, inputs)``: an array is the observed data alone; a mapping holds the observed data under
    ``observed`` and the inputs under their own names, one row per example each."""
    if isinstance(data, Mapping):
        if observed not in data:
            raise DataError(
                f"{name} is a mapping without the observed data {observed!r} (its keys: {sorted(data)}); put the data "
                f"under {observed!r} or pass observed=<its key>."
            )
        x = check_data(data[observed], name=f"{name}[{observed!r}]")
        inputs = check_inputs({k: v for k, v in data.items() if k != observed}, len(x), name=name)
        return x, inputs
    return check_data(data, name=name), {}


def take(inputs: dict[str, Any], index: Any) -> dict[str, Any]:
    """The rows ``index`` of every input."""
    return {k: v[index] for k, v in inputs.items()}


def check_seed(seed: Any, *, count: int = 1, name: str = "seed") -> int:
    """``seed`` as an int, or `BackendError`: an integer with ``0 <= seed`` and ``seed + count - 1 < 2**32`` (chain
    ``c`` of ``count`` uses ``seed + c``). Refuses floats (``1.5``), bools and out-of-range values, which torch,
    JAX and numpy would otherwise each treat differently (wrap, overflow or raise deep inside)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise BackendError(f"{name}={seed!r} must be an integer in [0, 2**32), e.g. {name}=0.")
    value = int(seed)
    if value < 0 or value + max(int(count), 1) - 1 >= SEED_LIMIT:
        top = SEED_LIMIT - max(int(count), 1)
        per = f" (with {count} chains seeding {name} + c, at most {top})" if count > 1 else ""
        raise BackendError(f"{name}={value} is out of range: use an integer in [0, 2**32){per}.")
    return value
