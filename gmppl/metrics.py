r"""Sample-quality metrics for mixtures with known modes (Srivastava et al. 2017; Lin et al. 2018).

For samples ``x_1..x_N`` of a generator and a mixture with centres ``c_1..c_K``, weights ``w_k``
and component standard deviation ``std``:

* a sample is **high quality** when it lies within ``3 std`` of its nearest centre;
* mode ``k`` is **captured** when at least ``min_count`` high-quality samples are assigned to it
  (default: a fifth of the ``N w_k`` expected, the rule of Lin et al. 2018, e.g. 20 of 2500
  samples on 25 equal modes);
* the **reverse KL** of the mode histogram is ``sum_k h_k log(h_k / w_k)``, ``h_k`` the share of
  high-quality samples assigned to mode ``k`` (``0 log 0 = 0``): 0 for a generator that spreads
  its good samples like the data, ``log K`` at most for equal weights.

>>> import numpy as np
>>> centres = np.array([[0.0, 0.0], [4.0, 0.0]])
>>> m = mode_coverage(np.array([[0.0, 0.01], [4.0, 0.0], [2.0, 0.0], [0.0, 0.0]]), centres, 0.1, min_count=1)
>>> m.modes, m.high_quality, round(m.reverse_kl, 6)
(2, 0.75, 0.056633)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl.errors import DataError

__all__ = ["ModeCoverage", "mode_coverage"]


@dataclass(frozen=True)
class ModeCoverage:
    """``modes`` captured of ``num_modes``, the ``high_quality`` share, the ``reverse_kl`` of the mode
    histogram, and ``counts`` of high-quality samples per mode."""

    modes: int
    num_modes: int
    high_quality: float
    reverse_kl: float
    counts: np.ndarray

    def __str__(self) -> str:
        return (
            f"modes {self.modes}/{self.num_modes}, high quality {100 * self.high_quality:.1f}%, "
            f"reverse KL {self.reverse_kl:.4f}"
        )


def mode_coverage(
    samples: Any,
    centers: Any,
    std: float,
    *,
    weights: Any = None,
    min_count: int | None = None,
    radius: float = 3.0,
) -> ModeCoverage:
    """Modes captured, share of high-quality samples and reverse KL of the mode histogram.

    ``samples``: ``(N, d)`` (numpy, torch or JAX); ``centers``: ``(K, d)``; ``std``: the
    components' standard deviation; ``weights``: mixture weights (default equal); ``radius``:
    how many ``std`` count as high quality (3, as in the papers).
    """
    x = to_numpy(samples).astype(np.float64)
    c = np.asarray(to_numpy(centers), dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if c.ndim == 1:
        c = c[:, None]
    if x.ndim != 2 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise DataError(f"samples {x.shape} and centers {c.shape} must be (N, d) and (K, d) with the same d.")
    if len(x) == 0 or len(c) == 0:
        raise DataError("mode_coverage needs at least one sample and one centre.")
    if not np.all(np.isfinite(x)):
        raise DataError("samples contain NaN or inf.")
    if not std > 0:
        raise DataError(f"std={std!r} must be positive.")
    k = len(c)
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(to_numpy(weights), dtype=np.float64)
    if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise DataError(f"weights must be {k} non-negative numbers summing to 1.")

    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    good = np.sqrt(d2[np.arange(len(x)), nearest]) <= radius * std
    counts = np.bincount(nearest[good], minlength=k)
    threshold = np.ceil(0.2 * len(x) * w) if min_count is None else np.full(k, min_count)
    captured = int(np.sum((counts >= threshold) & (counts > 0)))
    n_good = int(good.sum())
    if n_good:
        h = counts / n_good
        nz = h > 0
        rkl = float(np.sum(h[nz] * np.log(h[nz] / w[nz])))
    else:
        rkl = float("inf")
    return ModeCoverage(captured, k, n_good / len(x), rkl, counts)
