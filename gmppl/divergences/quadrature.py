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

from ..errors import NotSupported
from .fdivergences import FDivergence
from .registry import get

__all__ = ["quadrature"]


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

    ``divergence`` is an :class:`FDivergence` or a name (``"kl"``, ``"js"``, ...); the integration
    is :meth:`FDivergence.quadrature`. Returns a Python float (float64); ``scipy`` warns when it
    cannot reach the tolerance.

    >>> from scipy import stats
    >>> round(quadrature("kl", stats.norm(0, 1).logpdf, stats.norm(1, 1).logpdf, -20, 20), 10)
    0.5
    """
    d = get(divergence)
    if not isinstance(d, FDivergence):
        raise NotSupported(f"quadrature needs an f-divergence, got {type(d).__name__}")
    return d.quadrature(log_p, log_q, lower, upper, points=points, epsabs=epsabs, epsrel=epsrel, limit=limit)
