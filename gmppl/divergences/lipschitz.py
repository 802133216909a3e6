"""The gradient penalties that keep a Wasserstein-1 critic near 1-Lipschitz, written once for torch and JAX.

The Kantorovich–Rubinstein dual ``W1 = sup_{Lip(T) <= 1} E_P[T] - E_Q[T]`` needs a 1-Lipschitz critic;
WGAN-GP (Gulrajani et al. 2017) penalises ``E[(|grad T(x_hat)| - 1)^2]`` at random interpolates
``x_hat = e x + (1 - e) y`` of real ``x`` and generated ``y``, ``e ~ U(0, 1)`` per example; WGAN-LP
(Petzka et al. 2018) only the excess, ``E[max(0, |grad T(x_hat)| - 1)^2]``. The gradient is the
engine's (``torch.autograd.grad`` or ``jax.grad``) and so is the draw of ``e``; the rest is here.
"""

from __future__ import annotations

from types import ModuleType

from ._xp import Array

__all__ = ["interpolate", "penalty_from_grad"]

_TINY = 1e-12  # under the square root: keeps the norm's gradient finite where grad T = 0


def interpolate(real: Array, fake: Array, e: Array) -> Array:
    """``x_hat = e real + (1 - e) fake``; ``e`` broadcasts against the batch, e.g. shape ``(B, 1, ..., 1)``."""
    return e * real + (1 - e) * fake


def penalty_from_grad(xp: ModuleType, g: Array, *, one_sided: bool = False) -> Array:
    """``mean_i (|g_i| - 1)^2`` over the per-example gradients ``g_i = grad T(x_hat_i)`` (the batch's first axis);
    ``one_sided``: ``mean_i max(0, |g_i| - 1)^2``. ``|g_i| = sqrt(sum g_i^2 + 1e-12)``."""
    norm = xp.sqrt(xp.sum(xp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) + _TINY)
    excess = xp.clip(norm - 1.0, min=0.0) if one_sided else norm - 1.0
    return xp.mean(excess**2)
