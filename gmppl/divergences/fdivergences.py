r"""The f-divergence family ``D_f(P || Q) = E_Q[f(p/q)]`` and its variational (Fenchel) form.

For convex ``f`` with ``f(1) = 0``, Fenchel–Young ``f(u) + f*(t) >= u t`` gives, for every critic
``T`` with values in the domain of the convex conjugate ``f*``,

    D_f(P || Q) >= E_P[T(x)] - E_Q[f*(T(y))],

with equality at ``T* = f'(p/q)`` (Nguyen, Wainwright & Jordan 2010). An f-GAN critic outputs an
unconstrained ``v`` and ``activation(v)`` maps it into the domain (Nowozin, Cseke & Tomioka 2016,
Table 2); ``conjugate_activation(v) = f*(activation(v))`` is computed in one fused, overflow-free
expression for the adversarial backend.

==================  ==============================  ==================================  ==================
class               f(u)                            f*(t)                               activation(v)
==================  ==============================  ==================================  ==================
KL                  u log u                         exp(t - 1)                          v
ReverseKL           -log u                          -1 - log(-t),  t < 0                -exp(-v)
Pearson             (u - 1)^2                       t^2/4 + t                           v
Neyman              (1 - u)^2 / u                   2 - 2 sqrt(1 - t),  t < 1           1 - exp(-v)
SquaredHellinger    (sqrt u - 1)^2                  t / (1 - t),  t < 1                 1 - exp(-v)
Jeffreys            (u - 1) log u                   W + 1/W + t - 2,  W = W0(e^(1-t))   v
JensenShannon       (u log u - (u+1) log((u+1)/2))/2  -log(2 - e^(2t)) / 2, t < log(2)/2  (log 2 - softplus(-v))/2
GAN                 u log u - (u+1) log(u+1) + log 4  -log(1 - e^t) - log 4,  t < 0     -softplus(-v)
TotalVariation      |u - 1| / 2                     t,  |t| <= 1/2                      tanh(v) / 2
==================  ==============================  ==================================  ==================

Scalings that differ from Nowozin et al. (``docs/design.md``, "JS scaling"): ``JensenShannon``'s ``f``
is half of Nowozin's, so ``f*(t) = f_N*(2t) / 2`` and the activation is halved; ``D`` is then the
Jensen–Shannon divergence itself, at most ``log 2``. ``GAN`` adds ``log 4`` to Nowozin's ``f`` so
that ``f(1) = 0``: its bound is the GAN discriminator objective plus ``log 4`` and
``D_GAN = 2 JS``. ``SquaredHellinger`` keeps Nowozin's ``f``: ``D = int (sqrt p - sqrt q)^2``
``= 2 (1 - BC)``, twice the ``1 - BC`` convention.

Every method takes numpy arrays, torch tensors or JAX arrays (or Python floats, as numpy
``float64``) and returns the same engine, differentiable and jittable.

>>> import numpy as np
>>> d = KL()
>>> float(d.f(np.array(2.0)))  # 2 log 2
1.3862943611198906
>>> float(d.variational_bound(np.array([1.0]), np.array([1.0])))  # 1 - e^0
0.0
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, final

import numpy as np

from . import closed_forms as cf
from ._xp import Array, as_float, as_floats, log_lambertw_exp, log_sigmoid, softplus, xlogy

if TYPE_CHECKING:
    from .estimate import Estimate

__all__ = [
    "GAN",
    "KL",
    "Domain",
    "FDivergence",
    "Jeffreys",
    "JensenShannon",
    "Neyman",
    "Pearson",
    "ReverseKL",
    "SquaredHellinger",
    "TotalVariation",
]

_LOG2 = math.log(2.0)
_LOG4 = 2.0 * _LOG2


@dataclass(frozen=True)
class Domain:
    """An interval of the real line: the domain of a convex conjugate ``f*``.

    ``closed`` says whether its finite endpoints belong to it.
    """

    lower: float = -math.inf
    upper: float = math.inf
    closed: bool = False

    def contains(self, t: Array) -> Array:
        """Boolean array: which entries of ``t`` lie in the interval."""
        if self.closed:
            return (t >= self.lower) & (t <= self.upper)
        return (t > self.lower) & (t < self.upper)

    @property
    def interior_point(self) -> float:
        """A point safely inside (used to keep gradients finite outside the domain)."""
        lo, hi = self.lower, self.upper
        if math.isfinite(lo) and math.isfinite(hi):
            return 0.5 * (lo + hi)
        if math.isfinite(hi):
            return hi - 1.0
        if math.isfinite(lo):
            return lo + 1.0
        return 0.0

    def __str__(self) -> str:
        left = "[" if self.closed and math.isfinite(self.lower) else "("
        right = "]" if self.closed and math.isfinite(self.upper) else ")"
        return f"{left}{self.lower:g}, {self.upper:g}{right}"


class FDivergence(ABC):
    """Base of the f-divergences: ``D_f(P || Q) = E_Q[f(p/q)]`` for convex ``f``, ``f(1) = 0``.

    Subclasses are small final classes giving ``f``, ``f'`` (as a function of the log-ratio),
    ``f*`` on its ``domain``, the f-GAN ``activation`` and the fused ``f*(activation(v))``.
    """

    name: ClassVar[str]
    domain: ClassVar[Domain]
    #: ``lim_{u -> oo} f(u) / u``: what ``P``'s mass where ``q = 0`` costs per unit.
    slope_at_infinity: ClassVar[float]

    # ------------------------------------------------ the maths, one namespace `xp`
    @abstractmethod
    def _f(self, xp: ModuleType, u: Array) -> Array:
        """``f(u)`` for ``u >= 0``."""

    @abstractmethod
    def _f_prime_log(self, xp: ModuleType, r: Array) -> Array:
        """``f'(exp(r))``, written in the log-ratio ``r`` so large ratios do not overflow."""

    @abstractmethod
    def _conjugate(self, xp: ModuleType, t: Array) -> Array:
        """``f*(t)`` for ``t`` inside the domain."""

    @abstractmethod
    def _activation(self, xp: ModuleType, v: Array) -> Array:
        """The map from an unconstrained critic output into the domain."""

    @abstractmethod
    def _conjugate_activation(self, xp: ModuleType, v: Array) -> Array:
        """``f*(activation(v))`` fused into one overflow-free expression."""

    def _normal(self, xp: ModuleType, p: cf.NormalParams, q: cf.NormalParams) -> Array | None:
        """The closed form between two (diagonal) Normals, or None where there is none."""
        return None

    def _f_log(self, xp: ModuleType, r: Array) -> Array:
        """``f(exp(r))``; overridden where ``exp(r)`` underflowing to 0 would lose the value."""
        return self._f(xp, xp.exp(r))

    def _f_over_u_log(self, xp: ModuleType, r: Array) -> Array:
        """``f(u) / u`` at ``u = exp(r)``: the integrand of ``D_f`` under ``P``."""
        return self._f_log(xp, r) * xp.exp(-r)

    # ------------------------------------------------ public surface
    def f(self, u: Any) -> Array:
        """The generator ``f(u)`` for ``u >= 0`` (``+inf`` for ``u < 0``, the convex extension)."""
        xp, u = as_float(u)
        neg = u < 0
        out = self._f(xp, xp.where(neg, xp.ones_like(u), u))
        return xp.where(neg, xp.full_like(out, math.inf), out)

    def f_prime(self, u: Any) -> Array:
        """The derivative ``f'(u)``, ``u >= 0``: the optimal critic at likelihood ratio ``u``."""
        xp, u = as_float(u)
        return self._f_prime_log(xp, xp.log(u))

    def conjugate(self, t: Any) -> Array:
        """The convex conjugate ``f*(t) = sup_u (t u - f(u))``; ``+inf`` outside ``domain``."""
        xp, t = as_float(t)
        inside = self.domain.contains(t)
        safe = xp.where(inside, t, xp.full_like(t, self.domain.interior_point))
        out = xp.where(inside, self._conjugate(xp, safe), xp.full_like(t, math.inf))
        return xp.where(xp.isnan(t), t, out)

    def activation(self, v: Any) -> Array:
        """Map an unconstrained critic output ``v`` into the conjugate's domain (f-GAN)."""
        xp, v = as_float(v)
        return self._activation(xp, v)

    def conjugate_activation(self, v: Any) -> Array:
        """``f*(activation(v))`` without overflow, finite wherever the true value is."""
        xp, v = as_float(v)
        return self._conjugate_activation(xp, v)

    def variational_bound(self, t_p: Any, t_q: Any) -> Array:
        """``mean(T(x_P)) - mean(f*(T(y_Q)))`` from critic values already in the domain.

        A lower bound on ``D_f(P || Q)`` in expectation, tight at ``T = f'(p/q)``.
        """
        xp, (t_p, t_q) = as_floats(t_p, t_q)
        return xp.mean(t_p) - xp.mean(self.conjugate(t_q))

    def variational_bound_from_logits(self, v_p: Any, v_q: Any) -> Array:
        """The bound from unconstrained critic outputs: ``T = activation(v)``, fused ``f*``."""
        xp, (v_p, v_q) = as_floats(v_p, v_q)
        return xp.mean(self._activation(xp, v_p)) - xp.mean(self._conjugate_activation(xp, v_q))

    def optimal_critic(self, log_p: Any, log_q: Any) -> Array:
        """``T*(x) = f'(p(x)/q(x))`` from log-densities: the critic that makes the bound tight."""
        xp, (log_p, log_q) = as_floats(log_p, log_q)
        return self._f_prime_log(xp, log_p - log_q)

    def integrand(self, log_p: Any, log_q: Any) -> Array:
        """``q f(p/q)`` pointwise, from log-densities, with the limits where a density is 0.

        ``q = 0 < p`` gives ``p * slope_at_infinity``; ``p = q = 0`` gives 0. Summing over a
        finite support gives ``D_f``; integrating over the real line is :func:`quadrature`.
        """
        xp, (lp, lq) = as_floats(log_p, log_q)
        q_pos = lq > -math.inf
        p_pos = lp > -math.inf
        zeros = xp.zeros_like(lq)
        lq_s = xp.where(q_pos, lq, zeros)
        lp_s = xp.where(q_pos, lp, zeros)
        # p > q: p * f(u)/u; p <= q: q * f(u); a factor that underflows to 0 makes the term 0
        r = lp_s - lq_s
        above = r > 0
        w_p, w_q = xp.exp(lp_s), xp.exp(lq_s)
        body = xp.where(
            above,
            w_p * self._f_over_u_log(xp, xp.where(above, r, zeros)),
            w_q * self._f_log(xp, xp.where(above, zeros, r)),
        )
        body = xp.where(xp.where(above, w_p, w_q) == 0, zeros, body)
        if math.isinf(self.slope_at_infinity):
            tail = xp.where(p_pos, xp.full_like(lp, self.slope_at_infinity), zeros)
        else:
            tail = xp.exp(lp) * self.slope_at_infinity
        return xp.where(q_pos, body, tail)

    def closed_form(self, p: Any, q: Any) -> Array:
        """The exact ``D_f(P || Q)`` between two distributions of the same family.

        Bernoulli and Categorical (probs or logits) for every f; univariate and diagonal
        (``Independent``/``to_event``) Normals where a closed form exists. Takes
        torch/Pyro/NumPyro distribution objects and returns an array of their engine with
        their batch shape. Raises ``gmppl.NotSupported`` otherwise (use :func:`quadrature`).
        """
        return cf.closed_form(self, p, q)

    def quadrature(
        self,
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
        """``D_f`` between 1-D densities (log-density callables on numpy arrays) by adaptive quadrature
        of :meth:`integrand` over ``[lower, upper]``; see :func:`gmppl.divergences.quadrature`."""
        from scipy import integrate  # scipy.integrate is slow to import: only when integrating

        if not lower < upper:
            raise ValueError(f"need lower < upper, got [{lower}, {upper}]")

        def integrand(x: float) -> float:
            lp, lq = _scalar(log_p, x), _scalar(log_q, x)
            return float(self.integrand(np.float64(lp), np.float64(lq)))

        cuts = [lower, *sorted(float(c) for c in points if lower < c < upper), upper]
        total = 0.0
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            value, _ = integrate.quad(integrand, a, b, epsabs=epsabs, epsrel=epsrel, limit=limit)
            total += value
        return float(total)

    def monte_carlo(self, log_ratio: Any, *, under: Literal["q", "p"] = "q") -> Estimate:
        """Monte Carlo ``D_f`` from ``log p - log q`` at samples of ``Q`` (``E_Q[f(u)]``)
        or, with ``under="p"``, at samples of ``P`` (``E_P[f(u) / u]``); stderr ``std/sqrt(n)``.
        """
        from .estimate import Estimate

        if under not in ("q", "p"):
            raise ValueError(f"under must be 'q' or 'p', got {under!r}")
        xp, r = as_float(log_ratio)
        values = self._f_log(xp, r) if under == "q" else self._f_over_u_log(xp, r)
        return Estimate.of_mean(values, method=f"monte carlo under {under.upper()}")


def _scalar(fn: Callable[[np.ndarray], Any], x: float) -> float:
    return float(np.asarray(fn(np.asarray([x], dtype=np.float64)), dtype=np.float64).reshape(-1)[0])


# ---------------------------------------------------------------------- the family
@final
@dataclass(frozen=True)
class KL(FDivergence):
    """Forward Kullback–Leibler ``KL(P || Q) = E_P[log p/q]``: ``f(u) = u log u``, mode covering."""

    name: ClassVar[str] = "kl"
    domain: ClassVar[Domain] = Domain()
    slope_at_infinity: ClassVar[float] = math.inf

    def _f(self, xp, u):
        return xlogy(u, u)

    def _f_over_u_log(self, xp, r):  # E_P[log p/q]
        return r

    def _f_prime_log(self, xp, r):
        return r + 1.0

    def _conjugate(self, xp, t):
        return xp.exp(t - 1.0)

    def _activation(self, xp, v):
        return v

    def _conjugate_activation(self, xp, v):
        return xp.exp(v - 1.0)

    def _normal(self, xp, p, q):
        return cf.normal_kl(xp, p, q)


@final
@dataclass(frozen=True)
class ReverseKL(FDivergence):
    """Reverse KL ``KL(Q || P)``: ``f(u) = -log u``, mode seeking."""

    name: ClassVar[str] = "reverse_kl"
    domain: ClassVar[Domain] = Domain(upper=0.0)
    slope_at_infinity: ClassVar[float] = 0.0

    def _f(self, xp, u):
        return -xp.log(u)

    def _f_log(self, xp, r):
        return -r

    def _f_prime_log(self, xp, r):
        return -xp.exp(-r)

    def _conjugate(self, xp, t):
        return -1.0 - xp.log(-t)

    def _activation(self, xp, v):
        return -xp.exp(-v)

    def _conjugate_activation(self, xp, v):  # -1 - log(exp(-v))
        return v - 1.0

    def _normal(self, xp, p, q):
        return cf.normal_kl(xp, q, p)


@final
@dataclass(frozen=True)
class Pearson(FDivergence):
    """Pearson chi-squared ``int (p - q)^2 / q``: ``f(u) = (u - 1)^2``."""

    name: ClassVar[str] = "pearson"
    domain: ClassVar[Domain] = Domain()
    slope_at_infinity: ClassVar[float] = math.inf

    def _f(self, xp, u):
        return (u - 1.0) ** 2

    def _f_over_u_log(self, xp, r):  # (u - 1)(1 - 1/u)
        return -xp.expm1(r) * xp.expm1(-r)

    def _f_prime_log(self, xp, r):
        return 2.0 * xp.expm1(r)

    def _conjugate(self, xp, t):
        return 0.25 * t * t + t

    def _activation(self, xp, v):
        return v

    def _conjugate_activation(self, xp, v):
        return 0.25 * v * v + v

    def _normal(self, xp, p, q):  # int p^2/q - 1; infinite unless 2 sq^2 > sp^2
        return xp.expm1(cf.normal_log_affinity(xp, 2.0, p, q))


@final
@dataclass(frozen=True)
class Neyman(FDivergence):
    """Neyman chi-squared ``int (p - q)^2 / p``: ``f(u) = (1 - u)^2 / u``."""

    name: ClassVar[str] = "neyman"
    domain: ClassVar[Domain] = Domain(upper=1.0)
    slope_at_infinity: ClassVar[float] = 1.0

    def _f(self, xp, u):
        return (1.0 - u) ** 2 / u

    def _f_log(self, xp, r):
        e = xp.expm1(r)
        return e * e * xp.exp(-r)

    def _f_over_u_log(self, xp, r):  # (1 - 1/u)^2
        e = xp.expm1(-r)
        return e * e

    def _f_prime_log(self, xp, r):  # 1 - 1/u^2
        return -xp.expm1(-2.0 * r)

    def _conjugate(self, xp, t):
        return 2.0 - 2.0 * xp.sqrt(1.0 - t)

    def _activation(self, xp, v):
        return -xp.expm1(-v)

    def _conjugate_activation(self, xp, v):  # sqrt(1 - t) = exp(-v/2)
        return -2.0 * xp.expm1(-0.5 * v)

    def _normal(self, xp, p, q):  # int q^2/p - 1
        return xp.expm1(cf.normal_log_affinity(xp, 2.0, q, p))


@final
@dataclass(frozen=True)
class SquaredHellinger(FDivergence):
    """Squared Hellinger ``int (sqrt p - sqrt q)^2 = 2 (1 - BC)``: ``f(u) = (sqrt u - 1)^2``."""

    name: ClassVar[str] = "squared_hellinger"
    domain: ClassVar[Domain] = Domain(upper=1.0)
    slope_at_infinity: ClassVar[float] = 1.0

    def _f(self, xp, u):
        return (xp.sqrt(u) - 1.0) ** 2

    def _f_over_u_log(self, xp, r):  # (1 - u^(-1/2))^2
        e = xp.expm1(-0.5 * r)
        return e * e

    def _f_prime_log(self, xp, r):  # 1 - 1/sqrt(u)
        return -xp.expm1(-0.5 * r)

    def _conjugate(self, xp, t):
        return t / (1.0 - t)

    def _activation(self, xp, v):
        return -xp.expm1(-v)

    def _conjugate_activation(self, xp, v):  # (1 - e^-v) / e^-v
        return xp.expm1(v)

    def _normal(self, xp, p, q):  # 2 - 2 int sqrt(p q)
        return -2.0 * xp.expm1(cf.normal_log_affinity(xp, 0.5, p, q))


@final
@dataclass(frozen=True)
class Jeffreys(FDivergence):
    """Jeffreys ``KL(P || Q) + KL(Q || P)``: ``f(u) = (u - 1) log u``.

    ``f*(t) = W + 1/W + t - 2`` with ``W = W0(exp(1 - t))`` (Lambert W). Since
    ``log W + W = 1 - t`` this is ``1/W - log W - 1 = expm1(-y) - y`` with ``y = log W`` from
    :func:`~gmppl.divergences._xp.log_lambertw_exp`: ``exp(1 - t)`` is never formed and large
    ``|t|`` suffers no cancellation.
    """

    name: ClassVar[str] = "jeffreys"
    domain: ClassVar[Domain] = Domain()
    slope_at_infinity: ClassVar[float] = math.inf

    def _f(self, xp, u):
        return (u - 1.0) * xp.log(u)

    def _f_log(self, xp, r):
        return xp.expm1(r) * r

    def _f_over_u_log(self, xp, r):
        return -xp.expm1(-r) * r

    def _f_prime_log(self, xp, r):  # log u + 1 - 1/u
        return r - xp.expm1(-r)

    def _conjugate(self, xp, t):
        # with log w + w = 1 - t, W + 1/W + t - 2 = 1/W - log W - 1: no cancellation for t << 0
        y = log_lambertw_exp(1.0 - t)
        return xp.expm1(-y) - y

    def _activation(self, xp, v):
        return v

    def _conjugate_activation(self, xp, v):
        return self._conjugate(xp, v)

    def _normal(self, xp, p, q):
        return cf.normal_kl(xp, p, q) + cf.normal_kl(xp, q, p)


@final
@dataclass(frozen=True)
class JensenShannon(FDivergence):
    """Jensen–Shannon ``KL(P || M)/2 + KL(Q || M)/2``, ``M = (P + Q)/2``, at most ``log 2``.

    ``f(u) = (u log u - (u + 1) log((u + 1)/2)) / 2`` (half of Nowozin's, so ``D`` is JS itself):
    ``f*(t) = -log(2 - e^(2t)) / 2`` on ``t < log(2)/2``, activation ``(log 2 - softplus(-v))/2``.
    """

    name: ClassVar[str] = "js"
    domain: ClassVar[Domain] = Domain(upper=0.5 * _LOG2)
    slope_at_infinity: ClassVar[float] = 0.5 * _LOG2

    def _f(self, xp, u):
        return 0.5 * (xlogy(u, u) - (u + 1.0) * xp.log(0.5 * (u + 1.0)))

    def _f_over_u_log(self, xp, r):  # (log 2 - softplus(-r) - e^-r (softplus(r) - log 2)) / 2
        return 0.5 * (_LOG2 - softplus(-r) - xp.exp(-r) * (softplus(r) - _LOG2))

    def _f_prime_log(self, xp, r):  # (log 2 + log(u/(u+1))) / 2
        return 0.5 * (_LOG2 + log_sigmoid(r))

    def _conjugate(self, xp, t):
        return -0.5 * xp.log(2.0 - xp.exp(2.0 * t))

    def _activation(self, xp, v):
        return 0.5 * (_LOG2 - softplus(-v))

    def _conjugate_activation(self, xp, v):  # -log(2 sigmoid(-v)) / 2
        return 0.5 * (softplus(v) - _LOG2)


@final
@dataclass(frozen=True)
class GAN(FDivergence):
    """The original GAN divergence ``2 JS(P, Q)``: ``f(u) = u log u - (u+1) log(u+1) + log 4``.

    Nowozin's ``f`` plus ``log 4`` so that ``f(1) = 0``; the bound with ``T = -softplus(-v)`` is
    ``E_P[log D] + E_Q[log(1 - D)] + log 4`` with ``D = sigmoid(v)``.
    """

    name: ClassVar[str] = "gan"
    domain: ClassVar[Domain] = Domain(upper=0.0)
    slope_at_infinity: ClassVar[float] = 0.0

    def _f(self, xp, u):
        return xlogy(u, u) - (u + 1.0) * xp.log1p(u) + _LOG4

    def _f_over_u_log(self, xp, r):
        return -softplus(-r) - xp.exp(-r) * (softplus(r) - _LOG4)

    def _f_prime_log(self, xp, r):  # log(u / (u + 1))
        return log_sigmoid(r)

    def _conjugate(self, xp, t):
        return -xp.log(-xp.expm1(t)) - _LOG4

    def _activation(self, xp, v):
        return log_sigmoid(v)

    def _conjugate_activation(self, xp, v):  # -log(1 - sigmoid(v)) - log 4
        return softplus(v) - _LOG4


@final
@dataclass(frozen=True)
class TotalVariation(FDivergence):
    """Total variation ``int |p - q| / 2``: ``f(u) = |u - 1| / 2``, ``f*(t) = t`` on ``[-1/2, 1/2]``."""

    name: ClassVar[str] = "total_variation"
    domain: ClassVar[Domain] = Domain(-0.5, 0.5, closed=True)
    slope_at_infinity: ClassVar[float] = 0.5

    def _f(self, xp, u):
        return 0.5 * xp.abs(u - 1.0)

    def _f_over_u_log(self, xp, r):
        return 0.5 * xp.abs(xp.expm1(-r))

    def _f_prime_log(self, xp, r):  # a subgradient: sign(u - 1) / 2
        return 0.5 * xp.sign(r)

    def _conjugate(self, xp, t):
        return t

    def _activation(self, xp, v):
        return 0.5 * xp.tanh(v)

    def _conjugate_activation(self, xp, v):
        return 0.5 * xp.tanh(v)


FAMILY: tuple[type[FDivergence], ...] = (
    KL,
    ReverseKL,
    Pearson,
    Neyman,
    SquaredHellinger,
    Jeffreys,
    JensenShannon,
    GAN,
    TotalVariation,
)
