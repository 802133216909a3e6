r"""Exact f-divergences between distributions of one family (torch, Pyro or NumPyro objects).

* Bernoulli / Categorical (probs or logits): ``D_f = sum_k q_k f(p_k / q_k)``, with
  ``p_k * f'(oo)`` where ``q_k = 0 < p_k``; every f.
* Normal, and diagonal Normal (``Independent``/``to_event``):

  - ``KL = sum_i log(sq/sp) + (sp^2 + (mp - mq)^2) / (2 sq^2) - 1/2``; reverse KL and Jeffreys
    from it;
  - the affinity ``A_a = int p^a q^(1-a) = prod_i sqrt(sp^(2(1-a)) sq^(2a) / s_a^2)
    exp(-a(1-a)(mp - mq)^2 / (2 s_a^2))``, ``s_a^2 = a sq^2 + (1-a) sp^2`` (``+oo`` if
    ``s_a^2 <= 0``), gives Pearson ``A_2(P, Q) - 1``, Neyman ``A_2(Q, P) - 1`` and squared
    Hellinger ``2 - 2 A_{1/2}``;
  - Jensen–Shannon, GAN and total variation have none: ``gmppl.NotSupported``.

Objects are recognised by class name (``Bernoulli``, ``BernoulliProbs``, ``Categorical``,
``Normal``, ``Independent``, ...), so neither engine is imported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import DataError, NotSupported
from ._xp import Array, as_floats, logsumexp, softplus

if TYPE_CHECKING:
    from .fdivergences import FDivergence

__all__ = ["NormalParams", "closed_form", "normal_kl", "normal_log_affinity"]

_BERNOULLI = {"Bernoulli", "BernoulliProbs", "BernoulliLogits"}
_CATEGORICAL = {"Categorical", "CategoricalProbs", "CategoricalLogits"}
_SUPPORTED = "Bernoulli, Categorical, Normal and Independent(Normal)"


@dataclass(frozen=True)
class NormalParams:
    """A diagonal Normal: ``loc``, ``scale`` and how many trailing axes form the event."""

    loc: Array
    scale: Array
    event_ndims: int = 0


@dataclass(frozen=True)
class _Discrete:
    log_probs: Array  # normalised, outcomes on the last axis


def _mro_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _engine(dist: Any, value: Any) -> Array:
    """A parameter as an array of the distribution's engine (NumPyro keeps Python floats)."""
    if type(dist).__module__.startswith("numpyro"):
        import jax.numpy as jnp

        return jnp.asarray(value)
    return value


def _widen(value: Array) -> Array:
    """Constant low-precision parameters as float64 through their shortest round-trip decimal.

    ``torch.distributions.Bernoulli(0.3)`` stores ``float32(0.3) = 0.30000001192...``, which alone
    moves KL by ~1e-8; the shortest decimal that round-trips the float32 is the ``0.3`` the user
    wrote, so closed forms of constant distributions are exact to float64. Parameters that carry
    gradients (or traced JAX values) are left as they are, so closed forms stay differentiable.
    """
    import numpy as np

    if hasattr(value, "requires_grad"):  # torch
        import torch

        if value.requires_grad or value.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return value
        flat = value.detach().cpu().numpy().astype(np.float32).ravel()
        wide = np.array([float(str(v)) for v in flat], dtype=np.float64).reshape(tuple(value.shape))
        return torch.as_tensor(wide, device=value.device)
    if isinstance(value, np.ndarray | np.floating) and value.dtype in (np.float16, np.float32):
        flat = np.asarray(value, dtype=np.float32).ravel()
        return np.array([float(str(v)) for v in flat], dtype=np.float64).reshape(np.shape(value))
    return value


def _param(dist: Any) -> tuple[str, Array]:
    """Which parameter the object was built from (``probs`` or ``logits``), and its value."""
    own = vars(dist)
    for key in ("probs", "logits"):
        if key in own:
            return key, _widen(_engine(dist, own[key]))
    return "probs", _widen(_engine(dist, dist.probs))


def _describe(dist: Any) -> _Discrete | NormalParams:
    names = _mro_names(dist)
    if names & _BERNOULLI:
        kind, value = _param(dist)
        xp, (v,) = as_floats(value)
        if kind == "probs":
            lp = xp.stack([xp.log1p(-v), xp.log(v)], axis=-1)
        else:
            lp = xp.stack([-softplus(v), -softplus(-v)], axis=-1)
        return _Discrete(lp)
    if names & _CATEGORICAL:
        kind, value = _param(dist)
        xp, (v,) = as_floats(value)
        if kind == "probs":
            lp = xp.log(v / xp.sum(v, axis=-1, keepdims=True))
        else:
            lp = v - logsumexp(v, axis=-1)[..., None]
        return _Discrete(lp)
    if "Normal" in names:
        return NormalParams(_widen(_engine(dist, dist.loc)), _widen(_engine(dist, dist.scale)), 0)
    if "Independent" in names:
        base = _describe(dist.base_dist)
        if isinstance(base, NormalParams):
            return NormalParams(base.loc, base.scale, base.event_ndims + int(dist.reinterpreted_batch_ndims))
    raise NotSupported(
        f"no closed form for {type(dist).__name__}: closed forms cover {_SUPPORTED} distributions; "
        "use gmppl.divergences.quadrature (1-D densities) or d.monte_carlo on samples"
    )


def _sum_event(xp: ModuleType, x: Array, event_ndims: int) -> Array:
    if event_ndims == 0:
        return x
    return xp.sum(x, axis=tuple(range(-event_ndims, 0)))


def normal_kl(xp: ModuleType, p: NormalParams, q: NormalParams) -> Array:
    """``KL(P || Q)`` between diagonal Normals, summed over the event axes."""
    _, (mp, sp, mq, sq) = as_floats(p.loc, p.scale, q.loc, q.scale)
    log_ratio = 2.0 * (xp.log(sp) - xp.log(sq))
    z = (mp - mq) / sq
    per_dim = 0.5 * (xp.exp(log_ratio) + z * z - 1.0 - log_ratio)
    return _sum_event(xp, per_dim, p.event_ndims)


def normal_log_affinity(xp: ModuleType, alpha: float, p: NormalParams, q: NormalParams) -> Array:
    """``log int p^alpha q^(1 - alpha)`` between diagonal Normals (``+inf`` where it diverges)."""
    _, (mp, sp, mq, sq) = as_floats(p.loc, p.scale, q.loc, q.scale)
    var_a = alpha * sq * sq + (1.0 - alpha) * sp * sp
    ok = var_a > 0
    var_s = xp.where(ok, var_a, xp.ones_like(var_a))
    d = mp - mq
    per_dim = (
        (1.0 - alpha) * xp.log(sp)
        + alpha * xp.log(sq)
        - 0.5 * xp.log(var_s)
        - 0.5 * alpha * (1.0 - alpha) * d * d / var_s
    )
    per_dim = xp.where(ok, per_dim, xp.full_like(per_dim, math.inf))
    return _sum_event(xp, per_dim, p.event_ndims)


def closed_form(divergence: FDivergence, p: Any, q: Any) -> Array:
    """Exact ``D_f(P || Q)``; see the module docstring for what is covered."""
    P, Q = _describe(p), _describe(q)
    if isinstance(P, _Discrete) and isinstance(Q, _Discrete):
        xp, (lp, lq) = as_floats(P.log_probs, Q.log_probs)
        if lp.shape[-1] != lq.shape[-1]:
            raise DataError(f"P has {lp.shape[-1]} outcomes and Q has {lq.shape[-1]}: they must match")
        return xp.sum(divergence.integrand(lp, lq), axis=-1)
    if isinstance(P, NormalParams) and isinstance(Q, NormalParams):
        if P.event_ndims != Q.event_ndims:
            raise DataError(f"P has {P.event_ndims} event dimensions and Q has {Q.event_ndims}: use to_event on both")
        xp, _ = as_floats(P.loc, P.scale, Q.loc, Q.scale)
        out = divergence._normal(xp, P, Q)
        if out is None:
            raise NotSupported(
                f"{type(divergence).__name__} has no closed form between Normal distributions; "
                "use gmppl.divergences.quadrature(d, log_p, log_q, lower, upper) for 1-D densities "
                "or d.monte_carlo(log p - log q) on samples of Q"
            )
        return out
    raise NotSupported(
        f"no closed form between {type(p).__name__} and {type(q).__name__}: both must be of one family ({_SUPPORTED})"
    )
