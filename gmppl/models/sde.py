"""The forward SDEs of score-based diffusion, written once for torch and JAX (array API).

All three are linear, ``dx = f(t) x dt + g(t) dW`` on ``t in [0, 1]``, so the perturbation kernel
is Gaussian: ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)`` (Song et al. 2021, appendix B).

* ``"vp"`` (DDPM): ``beta(t) = b0 + t (b1 - b0)``, ``f = -beta/2``, ``g^2 = beta``;
  ``alpha_t = exp(-B(t)/2)`` with ``B(t) = int_0^t beta``, ``sigma_t^2 = 1 - alpha_t^2``; prior ``N(0, I)``.
* ``"subvp"``: same drift, ``g^2 = beta (1 - exp(-2 B(t)))``; ``sigma_t^2 = (1 - alpha_t^2)^2``.
* ``"ve"`` (SMLD): ``s(t) = s0 (s1/s0)^t``, ``f = 0``, ``g^2 = d s^2/dt = 2 s^2 log(s1/s0)``;
  ``alpha_t = 1``, ``sigma_t^2 = s(t)^2 - s0^2``; prior ``N(0, s1^2 I)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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

    def diffusion2(self, t: Any) -> Any:
        """``g(t)^2``."""
        xp = aac.array_namespace(t)
        if self.kind == "vp":
            return self._beta(t)
        if self.kind == "subvp":
            return self._beta(t) * -xp.expm1(-2.0 * self._int_beta(t))
        s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        return 2.0 * s**2 * math.log(self.sigma_max / self.sigma_min)

    def marginal(self, t: Any) -> tuple[Any, Any]:
        """``(alpha_t, sigma_t)`` of ``x_t | x_0 ~ N(alpha_t x_0, sigma_t^2 I)``."""
        xp = aac.array_namespace(t)
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
