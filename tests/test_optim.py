"""``gm.optim.Adam``: the same optimiser on both engines, global-norm clipping included."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm

# gradients of very different sizes, so clipping at norm 1 changes Adam's moment estimates
GRADS = [
    np.array([30.0, -40.0, 0.0]),
    np.array([0.1, 0.2, -0.2]),
    np.array([-3.0, 0.0, 4.0]),
    np.array([0.0, 0.5, 0.0]),
]


def run_torch(spec: gm.optim.Adam, fused: bool | None = None) -> np.ndarray:
    import torch

    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = spec.torch([p], fused=fused)
    for g in GRADS:
        p.grad = torch.as_tensor(g.copy())
        opt.step()
    return p.detach().numpy()


def run_optax(spec: gm.optim.Adam) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        opt = spec.optax()
        p = jnp.zeros(3, dtype=jnp.float64)
        state = opt.init(p)
        for g in GRADS:
            updates, state = opt.update(jnp.asarray(g), state, p)
            p = p + updates
        return np.asarray(p)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_torch_and_optax_take_the_same_steps(clip: float | None) -> None:
    """Four Adam steps from the same gradients agree in float64: to rounding unclipped; clipped, torch
    scales by ``c / (||g|| + 1e-6)`` and optax by ``c / ||g||``, a relative difference of at most
    ``1e-6 / ||g|| = 2e-8`` of the gradient here, which moves parameters of size 0.2 by about that much
    (measured 1.5e-8; bound 1e-7)."""
    spec = gm.optim.Adam(lr=0.1, clip_norm=clip)
    atol = 1e-12 if clip is None else 1e-7
    np.testing.assert_allclose(run_torch(spec), run_optax(spec), rtol=1e-10, atol=atol)


def test_clipping_rescales_to_the_global_norm() -> None:
    """``g -> g min(1, c / ||g||)`` before the step: the gradient torch's Adam sees has norm ``c``, and
    the trajectory differs from unclipped Adam's (which is invariant to the gradients' common scale only)."""
    import torch

    p = torch.zeros(3, requires_grad=True)
    opt = gm.optim.Adam(lr=0.1, clip_norm=2.0).torch([p])
    p.grad = torch.tensor([30.0, -40.0, 0.0])
    opt.step()
    assert float(p.grad.norm()) == pytest.approx(2.0, rel=1e-6)
    clipped, plain = run_torch(gm.optim.Adam(lr=0.1, clip_norm=1.0)), run_torch(gm.optim.Adam(lr=0.1))
    assert np.abs(clipped - plain).max() > 1e-2


def test_fused_torch_adam_clips_too() -> None:
    spec = gm.optim.Adam(lr=0.1, clip_norm=1.0)
    np.testing.assert_allclose(run_torch(spec, fused=True), run_torch(spec), rtol=1e-6)
