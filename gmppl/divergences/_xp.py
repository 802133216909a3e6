"""Array-namespace helpers: the few functions the array API lacks.

Everything in :mod:`gmppl.divergences` is written once against the namespace returned by
:func:`array_api_compat.array_namespace`, so the same code runs on numpy arrays, torch tensors
(differentiable, any device) and JAX arrays (jittable, differentiable). Python floats and lists
are treated as numpy ``float64`` arrays.

The helpers here fill the gaps: ``softplus``, ``log_sigmoid``, ``xlogy``, ``logsumexp``,
``stop_gradient`` and the principal branch ``W0`` of the Lambert W function, which the
Jeffreys conjugate needs.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import array_api_compat as aac
import numpy as np

Array = Any  # a numpy array, torch tensor or JAX array

__all__ = [
    "Array",
    "as_float",
    "as_floats",
    "log_lambertw_exp",
    "lambertw",
    "log_sigmoid",
    "logsumexp",
    "softplus",
    "stop_gradient",
    "to_numpy",
    "xlogy",
]


def _is_array(x: Any) -> bool:
    return aac.is_numpy_array(x) or aac.is_torch_array(x) or aac.is_jax_array(x)


def _floating(xp: ModuleType, x: Array) -> Array:
    if xp.isdtype(x.dtype, "real floating"):
        return x
    # integers and booleans: the namespace's default float (float64 for numpy)
    default = xp.asarray(0.0).dtype if not aac.is_numpy_namespace(xp) else xp.float64
    return xp.astype(x, default)


def as_floats(*xs: Any) -> tuple[ModuleType, list[Array]]:
    """The common namespace of ``xs`` and the arguments as floating arrays of it.

    Arrays keep their engine, dtype and device; Python scalars and lists become arrays of
    the others' namespace and dtype, or numpy ``float64`` when no argument is an array.
    """
    arrays = [x for x in xs if _is_array(x) and not isinstance(x, np.generic)]
    if not arrays:
        xp = aac.array_namespace(np.zeros(0))
        return xp, [xp.asarray(np.asarray(x, dtype=np.float64)) for x in xs]
    xp = aac.array_namespace(*arrays)
    ref = _floating(xp, arrays[0])
    out = []
    for x in xs:
        if _is_array(x) and not isinstance(x, np.generic):
            out.append(_floating(xp, x))
        else:
            out.append(xp.asarray(np.asarray(x, dtype=np.float64), dtype=ref.dtype, device=aac.device(ref)))
    return xp, out


def as_float(x: Any) -> tuple[ModuleType, Array]:
    """``(xp, x)`` for a single argument; see :func:`as_floats`."""
    xp, (y,) = as_floats(x)
    return xp, y


def to_numpy(x: Any) -> np.ndarray:
    """A float64 numpy copy of any array (torch tensors are detached and moved to the CPU)."""
    if aac.is_torch_array(x):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def stop_gradient(x: Array) -> Array:
    """``x`` with no gradient flowing back through it (identity on numpy)."""
    if aac.is_torch_array(x):
        return x.detach()
    if aac.is_jax_array(x):
        import jax

        return jax.lax.stop_gradient(x)
    return x


def softplus(x: Array) -> Array:
    """``log(1 + exp(x))`` without overflow."""
    xp = aac.array_namespace(x)
    return xp.logaddexp(x, xp.zeros_like(x))


def log_sigmoid(x: Array) -> Array:
    """``log(1 / (1 + exp(-x))) = -softplus(-x)``."""
    return -softplus(-x)


def xlogy(x: Array, y: Array) -> Array:
    """``x * log(y)``, with ``0 * log(0) = 0``; gradients stay finite where ``x = 0``."""
    xp = aac.array_namespace(x, y)
    zero = x == 0
    return xp.where(zero, xp.zeros_like(x), x * xp.log(xp.where(zero, xp.ones_like(y), y)))


def logsumexp(x: Array, axis: int = -1) -> Array:
    """``log(sum(exp(x), axis))`` shifted by the (gradient-free) maximum."""
    xp = aac.array_namespace(x)
    m = stop_gradient(xp.max(x, axis=axis, keepdims=True))
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    return xp.squeeze(out, axis=axis)


_HALLEY_STEPS = 3


def log_lambertw_exp(s: Array) -> Array:
    """``y = log W0(exp(s))``: the root of ``y + exp(y) = s``, computed without forming ``exp(s)``.

    ``W0(exp(s))`` solves ``w + log w = s``; in the variable ``y = log w`` the equation
    ``g(y) = y + e^y - s = 0`` has bounded derivatives for every ``s``, so no step overflows.
    Initial guess: the asymptotic series ``w ~ s - log s + log s / s`` for ``s > 1``, Winitzki's
    ``w ~ L (1 - log(1 + L) / (2 + L))``, ``L = log1p(e^s)``, for ``s <= 1`` and ``y = s`` far
    below (``w ~ e^s``). Then three Halley steps (cubic convergence). The iterations carry no
    gradient; one final Newton step does, giving the exact derivative ``dy/ds = 1 / (1 + W)``
    (implicit-function theorem), so torch and JAX differentiate it cheaply and JAX can jit it.
    """
    xp = aac.array_namespace(s)
    s0 = stop_gradient(s)
    one, two = xp.ones_like(s0), 2.0 * xp.ones_like(s0)
    big = s0 > 1.0
    sb = xp.where(big, s0, two)
    ls = xp.log(sb)
    y_big = xp.log(sb - ls + ls / sb)
    tiny = s0 < -20.0
    ss = xp.where(big | tiny, one, s0)
    L = xp.log1p(xp.exp(ss))
    y_mid = xp.log(L * (1.0 - xp.log1p(L) / (2.0 + L)))
    y = xp.where(big, y_big, xp.where(tiny, s0, y_mid))
    for _ in range(_HALLEY_STEPS):
        e = xp.exp(y)
        g = y + e - s0
        g1 = 1.0 + e
        y = y - 2.0 * g * g1 / (2.0 * g1 * g1 - g * e)
    y = stop_gradient(y)
    e = xp.exp(y)
    return y - (y + e - s) / (1.0 + e)


def lambertw(x: Array) -> Array:
    """Principal branch ``W0(x)`` for ``x >= -1/e`` (``w e^w = x``); NaN below ``-1/e``.

    ``x > 0`` goes through :func:`log_lambertw_exp` (log space: no overflow for huge ``x``);
    ``-1/e <= x <= 0`` uses Halley steps on ``w e^w - x`` from the branch-point series
    ``w ~ -1 + p - p^2/3 + 11 p^3/72``, ``p = sqrt(2(e x + 1))`` (or ``x - x^2`` near 0).
    Differentiable: ``W'(x) = W / (x (1 + W))``.
    """
    xp, x = as_float(x)
    pos = x > 0
    s = xp.log(xp.where(pos, x, xp.ones_like(x)))
    w_pos = xp.exp(log_lambertw_exp(s))

    x0 = stop_gradient(x)
    valid = x0 >= -1.0 / math.e
    xn = xp.where(pos | ~valid, -0.1 * xp.ones_like(x0), x0)
    p = xp.sqrt(xp.maximum(2.0 * (math.e * xn + 1.0), xp.zeros_like(xn)))
    w = xp.where(xn < -0.25, -1.0 + p - p * p / 3.0 + 11.0 / 72.0 * p * p * p, xn - xn * xn)
    for _ in range(6):
        ew = xp.exp(w)
        f = w * ew - xn
        d = ew * (w + 1.0)
        hw = 2.0 * w + 2.0
        denom = d - (w + 2.0) * f / xp.where(hw == 0, xp.ones_like(hw), hw)
        step = xp.where(xp.abs(denom) > 0, f / xp.where(denom == 0, xp.ones_like(denom), denom), 0.0 * w)
        w = xp.maximum(w - step, -xp.ones_like(w))
    w = stop_gradient(w)
    ew = xp.exp(w)
    d = ew * (w + 1.0)
    xg = xp.where(pos | ~valid, xn, x)
    w_neg = w - (w * ew - xg) / xp.where(d > 0, d, xp.ones_like(d)) * xp.astype(d > 0, w.dtype)
    out = xp.where(pos, w_pos, w_neg)
    return xp.where(valid, out, xp.nan * xp.ones_like(out))
