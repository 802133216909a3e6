r"""``D_f`` between 1-D densities by adaptive quadrature (float64 ``scipy.integrate.quad``).

    D_f(P || Q) = int_lower^upper q(x) f(p(x) / q(x)) dx

The integrand is :meth:`FDivergence.integrand` (``q f(p/q)`` from log-densities, with the
right limits where a density underflows to 0). ``points`` splits the range at known features
(mixture modes, kinks); each piece is integrated separately, so infinite ends are allowed too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import integrate

from ..errors import NotSupported

__all__ = ["quadrature"]


def _scalar(fn: Callable[[np.ndarray], Any], x: float) -> float:
    return float(np.asarray(fn(np.asarray([x], dtype=np.float64)), dtype=np.float64).reshape(-1)[0])


def quadrature(
    divergence: Any,
    log_p: Callable[[np.ndarray], Any],
    log_q: Callable[[np.ndarray], Any],
    lower: float = -math.inf,
    upper: float = math.inf,
    *,
    points: Sequence[float] = (),
    epsabs: float = 1e-12,
    epsrel: float = 1e-10,
    limit: int = 500,
) -> float:
    """``D_f(P || Q)`` for 1-D densities given as log-density callables on numpy arrays.

    ``divergence`` is an :class:`FDivergence` or a name (``"kl"``, ``"js"``, ...). Returns a
    Python float (float64); ``scipy`` warns when it cannot reach the tolerance.

    >>> from scipy import stats
    >>> round(quadrature("kl", stats.norm(0, 1).logpdf, stats.norm(1, 1).logpdf, -20, 20), 10)
    0.5
    """
    from .fdivergences import FDivergence
    from .registry import get

    d = get(divergence)
    if not isinstance(d, FDivergence):
        raise NotSupported(f"quadrature needs an f-divergence, got {type(d).__name__}")
    if not lower < upper:
        raise ValueError(f"need lower < upper, got [{lower}, {upper}]")

    def integrand(x: float) -> float:
        lp, lq = _scalar(log_p, x), _scalar(log_q, x)
        return float(d.integrand(np.float64(lp), np.float64(lq)))

    cuts = [lower, *sorted(float(c) for c in points if lower < c < upper), upper]
    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        value, _ = integrate.quad(integrand, a, b, epsabs=epsabs, epsrel=epsrel, limit=limit)
        total += value
    return float(total)
