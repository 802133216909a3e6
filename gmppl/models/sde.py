"""The forward SDEs of score-based diffusion and the maths run on them, written once for torch and JAX (array API).

All three are linear, ``dx = f(t) x dt + g(t) dW`` on ``t in [0, 1]``, so the perturbation kernel
is Gaussian: ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)`` (Song et al. 2021, appendix B).

* ``"vp"`` (DDPM): ``beta(t) = b0 + t (b1 - b0)``, ``f = -beta/2``, ``g^2 = beta``;
  ``alpha_t = exp(-B(t)/2)`` with ``B(t) = int_0^t beta``, ``sigma_t^2 = 1 - alpha_t^2``; prior ``N(0, I)``.
* ``"subvp"``: same drift, ``g^2 = beta (1 - exp(-2 B(t)))``; ``sigma_t^2 = (1 - alpha_t^2)^2``.
* ``"ve"`` (SMLD): ``s(t) = s0 (s1/s0)^t``, ``f = 0``, ``g^2 = d s^2/dt = 2 s^2 log(s1/s0)``;
  ``alpha_t = 1``, ``sigma_t^2 = s(t)^2 - s0^2``; prior ``N(0, s1^2 I)``.

On them, each engine's training loss and samplers call the same arithmetic; only the random draws
(``torch.rand``/``randn`` or ``jax.random``) and the loops (Python or ``lax.scan``) are the engine's:

* :func:`dsm_loss` — denoising score matching at drawn ``t`` and ``z``;
* :func:`importance_times` — ``t`` drawn with density proportional to ``g^2 / sigma^2`` and its weight;
* :func:`reverse_step` — one Euler–Maruyama step of the reverse-time SDE;
* :func:`langevin_step` — one Langevin corrector step of the predictor–corrector sampler;
* :func:`probability_flow_drift` — the velocity of the probability-flow ODE.

Each takes the array namespace ``xp`` first (``array_api_compat.array_namespace`` of the arrays),
resolved once by the caller rather than per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat as aac

from gmppl.errors import UnknownName

SDES = ("vp", "subvp", "ve")


@dataclass(frozen=True)
class SDE:
    """A linear forward SDE; every method takes ``t`` as an array (torch or JAX) of any shape."""

    kind: str = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in SDES:
            raise UnknownName(f"sde={self.kind!r} is unknown; use one of {SDES}.")

    # ---------------------------------------------------------------- small-t cut-off
    @property
    def t_eps(self) -> float:
        """Where training and the reverse processes stop (the score blows up as ``t -> 0``)."""
        return 1e-5 if self.kind == "ve" else 1e-3

    @property
    def prior_std(self) -> float:
        return self.sigma_max if self.kind == "ve" else 1.0

    # ---------------------------------------------------------------- coefficients
    def _int_beta(self, t: Any) -> Any:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _beta(self, t: Any) -> Any:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def drift_coef(self, t: Any) -> Any:
        """``f(t)`` in ``f(x, t) = f(t) x``."""
        return 0.0 * t if self.kind == "ve" else -0.5 * self._beta(t)

    def diffusion2(self, t: Any, xp: ModuleType | None = None) -> Any:
        """``g(t)^2``; ``xp``, the namespace of ``t``, when the caller has it."""
        xp = aac.array_namespace(t) if xp is None else xp
        if self.kind == "vp":
            return self._beta(t)
        if self.kind == "subvp":
            return self._beta(t) * -xp.expm1(-2.0 * self._int_beta(t))
        s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return 2.0 * s**2 * math.log(self.sigma_max / self.sigma_min)

    def marginal(self, t: Any, xp: ModuleType | None = None) -> tuple[Any, Any]:
        """``(alpha_t, sigma_t)`` of ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)``; ``xp`` as in ``diffusion2``."""
        xp = aac.array_namespace(t) if xp is None else xp
        if self.kind == "ve":
            s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
            return 1.0 + 0.0 * t, xp.sqrt(s**2 - self.sigma_min**2)
        b = self._int_beta(t)
        alpha = xp.exp(-0.5 * b)
        var = -xp.expm1(-b)  # 1 - alpha^2, accurate for small t
        return alpha, (xp.sqrt(var) if self.kind == "vp" else var)

    def prior_logp(self, z: Any) -> Any:
        """``log N(z; 0, prior_std^2 I)`` summed over all but the leading axis."""
        xp = aac.array_namespace(z)
        d = math.prod(z.shape[1:])
        s2 = self.prior_std**2
        return -0.5 * xp.sum(xp.reshape(z, (z.shape[0], -1)) ** 2, axis=1) / s2 - 0.5 * d * math.log(2 * math.pi * s2)


def as_sde(sde: Any, **kwargs: Any) -> SDE:
    """``"vp" | "ve" | "subvp"`` or an ``SDE`` instance."""
    if isinstance(sde, SDE):
        return sde
    if not isinstance(sde, str):
        raise UnknownName(f"sde={sde!r} must be one of {SDES} or a gmppl.models.sde.SDE.")
    return SDE(kind=sde.lower(), **kwargs)


# ------------------------------------------------------------------ importance sampling of t
def _lik_potential(xp: ModuleType, sde: SDE, t: Any) -> Any:
    """``G(t)``, an antiderivative of ``g(t)^2 / sigma_t^2`` (the likelihood weight over the DSM weight)."""
    if sde.kind == "ve":
        r2 = 2.0 * math.log(sde.sigma_max / sde.sigma_min)
        return 2.0 * math.log(sde.sigma_min) + xp.log(xp.expm1(r2 * t))
    b = sde._int_beta(t)
    if sde.kind == "vp":
        return xp.log(xp.expm1(b))  # d/dt log(e^B - 1) = beta e^B / (e^B - 1) = g^2 / sigma^2
    return 2.0 * xp.log(2.0 * xp.sinh(0.5 * b))  # sub-VP: g^2 / sigma^2 = beta (1 + e^-B) / (1 - e^-B)


def _lik_potential_inverse(xp: ModuleType, sde: SDE, g: Any) -> Any:
    """``t`` with ``G(t) = g``."""
    if sde.kind == "ve":
        r2 = 2.0 * math.log(sde.sigma_max / sde.sigma_min)
        return xp.log1p(xp.exp(g - 2.0 * math.log(sde.sigma_min))) / r2
    if sde.kind == "vp":
        b = xp.log1p(xp.exp(-xp.abs(g))) + xp.clip(g, min=0.0)  # softplus(g): e^B - 1 = e^g
    else:
        b = 2.0 * xp.asinh(0.5 * xp.exp(0.5 * g))
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return 2.0 * b / (b0 + xp.sqrt(b0 * b0 + 2.0 * db * b))  # root of b0 t + db t^2 / 2 = B, cancellation-free


def importance_times(xp: ModuleType, sde: SDE, u: Any) -> tuple[Any, Any]:
    """``(t, w)`` from ``u ~ U(0, 1)``: ``t`` drawn on ``[eps, 1]`` with density ``q(t)`` proportional to
    ``g(t)^2 / sigma_t^2`` (by inverting its CDF), and ``w = g(t)^2 / (sigma_t^2 (1 - eps) q(t))``, the constant
    that makes ``w * dsm_loss(..., "sigma2")`` at these ``t`` an unbiased estimate of the likelihood-weighted
    loss at ``t ~ U(eps, 1)`` (Song et al. 2021b, importance sampling of the likelihood weighting)."""
    eps = sde.t_eps
    lo = _lik_potential(xp, sde, xp.asarray(eps, dtype=u.dtype))
    hi = _lik_potential(xp, sde, xp.asarray(1.0, dtype=u.dtype))
    t = xp.clip(_lik_potential_inverse(xp, sde, lo + u * (hi - lo)), min=eps, max=1.0)
    return t, (hi - lo) / (1.0 - eps) + 0.0 * t


# ------------------------------------------------------------------ training and sampling arithmetic
def dsm_loss(
    xp: ModuleType, sde: SDE, score_net: Callable[[Any, Any], Any], x0: Any, t: Any, z: Any, weighting: str = "sigma2"
) -> Any:
    """Per-example denoising score-matching loss, shape ``(B,)``, at drawn ``t`` ``(B,)`` and ``z ~ N(0, I)``.

    ``x_t = alpha_t x0 + sigma_t z`` and ``l = ||sigma_t s_theta(x_t, t) + z||^2
    = sigma_t^2 ||s_theta(x_t, t) - grad log p(x_t | x0)||^2``, since ``grad log p(x_t | x0) = -z / sigma_t``;
    ``weighting="likelihood"`` multiplies by ``g(t)^2 / sigma_t^2`` (the weight ``lambda = g^2``).
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha, sigma = (xp.reshape(a, shape) for a in sde.marginal(t, xp))
    s = score_net(alpha * x0 + sigma * z, t)
    per = xp.sum(xp.reshape((sigma * s + z) ** 2, (x0.shape[0], -1)), axis=1)
    if weighting == "likelihood":
        per = per * sde.diffusion2(t, xp) / xp.reshape(sigma, (-1,)) ** 2
    return per


def reverse_step(xp: ModuleType, sde: SDE, x: Any, t: Any, dt: Any, s: Any, noise: Any = None) -> Any:
    """One Euler–Maruyama step, from ``t`` to ``t - dt``, of the reverse SDE ``dx = [f x - g^2 s] dt + g dW_bar``.

    ``x - (f(t) x - g(t)^2 s) dt + sqrt(g(t)^2 dt) noise`` with ``s = s_theta(x, t)`` and
    ``noise ~ N(0, I)``; ``noise=None`` gives the mean (the sampler's last, noise-free step).
    """
    g2 = sde.diffusion2(t, xp)
    mean = x - (sde.drift_coef(t) * x - g2 * s) * dt
    return mean if noise is None else mean + xp.sqrt(g2 * dt) * noise


def langevin_step(xp: ModuleType, sde: SDE, x: Any, t: Any, dt: Any, s: Any, z: Any, snr: float) -> Any:
    """One Langevin corrector step at ``t`` (Song et al. 2021, algorithm 4): ``x + e s + sqrt(2 e) z``.

    The step size ``e = 2 a (snr ||z|| / ||s||)^2`` uses batch means of the per-example norms (as Song
    et al.), ``||s||`` floored at ``1e-12``; ``a = 1`` for VE, else ``1 - g(t)^2 dt``.
    """
    a = 1.0 if sde.kind == "ve" else 1.0 - sde.diffusion2(t, xp) * dt
    ratio = xp.mean(_norms(xp, z)) / xp.clip(xp.mean(_norms(xp, s)), min=1e-12)
    step = 2 * a * (snr * ratio) ** 2
    return x + step * s + xp.sqrt(2 * step) * z


def probability_flow_drift(xp: ModuleType, sde: SDE, x: Any, t: Any, s: Any) -> Any:
    """``f~(x, t) = f(t) x - g(t)^2 s / 2``, the probability-flow ODE's velocity, with ``s = s_theta(x, t)``."""
    return sde.drift_coef(t) * x - 0.5 * sde.diffusion2(t, xp) * s


def _norms(xp: ModuleType, x: Any) -> Any:
    """Per-example Euclidean norms of a batch ``(B, ...)``."""
    return xp.linalg.vector_norm(xp.reshape(x, (x.shape[0], -1)), axis=1)
