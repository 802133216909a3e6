"""One code path, three engines: numpy, torch and JAX give the same numbers and gradients.

Parity ``RTOL = 1e-12`` (float64 everywhere); gradients against central finite differences
(step ``1e-6``) to ``GRAD_RTOL = 1e-6``; Lambert W against scipy to ``1e-12`` relative away from
the branch point ``-1/e``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

import gmppl.divergences as gd
from gmppl.divergences._xp import log_lambertw_exp

RTOL = 1e-12
GRAD_RTOL = 1e-6
FAMILY = [cls() for cls in gd.FAMILY]
IDS = [type(d).__name__ for d in FAMILY]
U = np.array([0.05, 0.4, 1.0, 1.3, 7.0])
V = np.array([-4.0, -0.7, 0.0, 0.9, 3.5])


def methods(d):
    """Every elementwise method with inputs inside its domain."""
    t = np.asarray(d.activation(V))
    return {
        "f": (d.f, U),
        "f_prime": (d.f_prime, U),
        "conjugate": (d.conjugate, t),
        "activation": (d.activation, V),
        "conjugate_activation": (d.conjugate_activation, V),
    }


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_numpy_torch_jax_agree(d, x64):
    import jax.numpy as jnp

    for name, (fn, x) in methods(d).items():
        want = np.asarray(fn(x))
        got_t = fn(torch.tensor(x))
        got_j = fn(jnp.asarray(x))
        assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64, name
        assert got_j.dtype == jnp.float64, name
        np.testing.assert_allclose(got_t.numpy(), want, rtol=RTOL, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(np.asarray(got_j), want, rtol=RTOL, atol=1e-14, err_msg=name)
    lp, lq = np.log([0.2, 0.5, 0.3]), np.log([0.4, 0.1, 0.5])
    want = float(d.variational_bound_from_logits(lp, lq))
    assert float(d.variational_bound_from_logits(torch.tensor(lp), torch.tensor(lq))) == pytest.approx(want, rel=RTOL)
    assert float(d.variational_bound_from_logits(jnp.asarray(lp), jnp.asarray(lq))) == pytest.approx(want, rel=RTOL)
    assert float(d.optimal_critic(torch.tensor(lp), torch.tensor(lq))[0]) == pytest.approx(
        float(d.optimal_critic(lp, lq)[0]), rel=RTOL
    )


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_torch_gradients_match_finite_differences(d):
    for name, (fn, x) in methods(d).items():
        if isinstance(d, gd.TotalVariation) and name in ("f", "f_prime"):
            continue  # |u - 1| / 2 and its sign: no derivative to check at the kink, constant elsewhere
        xt = torch.tensor(x, requires_grad=True)
        assert torch.autograd.gradcheck(fn, (xt,), eps=1e-6, atol=1e-7, rtol=GRAD_RTOL), name


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_jax_gradients_match_finite_differences_and_jit(d, x64):
    import jax
    import jax.numpy as jnp

    h = 1e-6
    for name, (fn, x) in methods(d).items():
        if isinstance(d, gd.TotalVariation) and name in ("f", "f_prime"):
            continue  # the kink at u = 1
        xj = jnp.asarray(x)
        g = jax.vmap(jax.grad(fn))(xj)
        fd = (np.asarray(fn(x + h)) - np.asarray(fn(x - h))) / (2 * h)
        np.testing.assert_allclose(np.asarray(g), fd, rtol=GRAD_RTOL, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(xj)), np.asarray(fn(x)), rtol=RTOL, err_msg=name)


def test_jit_in_default_float32_and_loss_gradient():
    import jax
    import jax.numpy as jnp

    d = gd.get("js")
    loss = jax.jit(lambda vp, vq: -d.variational_bound_from_logits(vp, vq))
    vp, vq = jnp.linspace(-3.0, 3.0, 7), jnp.linspace(-1.0, 2.0, 7)
    assert loss(vp, vq).dtype == jnp.float32
    assert float(loss(vp, vq)) == pytest.approx(
        -float(d.variational_bound_from_logits(np.asarray(vp), np.asarray(vq))), rel=1e-6
    )
    gp, gq = jax.grad(loss, argnums=(0, 1))(vp, vq)
    np.testing.assert_allclose(np.asarray(gp), -np.asarray(jax.nn.sigmoid(-vp)) / 2 / 7, rtol=1e-5)


def test_closed_form_is_differentiable_in_torch():
    loc = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)

    def kl(a):
        p = torch.distributions.Independent(torch.distributions.Normal(a, 1.5), 1)
        q = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)
        return gd.SquaredHellinger().closed_form(p, q)

    assert torch.autograd.gradcheck(kl, (loc,), eps=1e-6, atol=1e-8)


def test_python_floats_and_lists_are_float64_numpy():
    d = gd.KL()
    out = d.f([0.5, 2.0])
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert float(d.conjugate(0.0)) == pytest.approx(math.exp(-1))
    assert d.f(np.array([1, 2])).dtype == np.float64  # integers become floats
    assert float(d.variational_bound([1.0, 1.0], [1.0])) == pytest.approx(0.0)


def test_torch_device_is_kept(device):
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    v = torch.linspace(-5, 5, 11, device=device)
    for d in FAMILY:
        out = d.conjugate_activation(v)
        assert out.device == v.device and out.dtype == torch.float32
        assert torch.all(torch.isfinite(out))


def test_lambertw_matches_scipy_and_is_differentiable(x64):
    import jax
    import jax.numpy as jnp

    x = np.concatenate([-np.exp(-1) + np.logspace(-6, -0.5, 40), np.linspace(-0.3, 0, 20), np.logspace(-300, 300, 200)])
    np.testing.assert_allclose(np.asarray(gd.lambertw(x)), special.lambertw(x).real, rtol=1e-12, atol=1e-300)
    assert float(gd.lambertw(-np.exp(-1))) == pytest.approx(-1.0, abs=1e-7)
    assert np.isnan(float(gd.lambertw(-1.0)))
    s = np.linspace(-700.0, 700.0, 1401)  # log space: W0(exp(s)) without forming exp(s)
    np.testing.assert_allclose(
        np.asarray(log_lambertw_exp(s)), np.log(special.lambertw(np.exp(s)).real), rtol=1e-13, atol=1e-13
    )
    big = float(log_lambertw_exp(np.array(1e5)))  # exp(1e5) overflows; W ~ s - log s
    assert math.exp(big) + big == pytest.approx(1e5, rel=1e-14)
    xs = np.array([-0.3, -0.1, 0.5, 3.0, 1e3])
    w = special.lambertw(xs).real
    expect = w / (xs * (1 + w))
    xt = torch.tensor(xs, requires_grad=True)
    (gt,) = torch.autograd.grad(gd.lambertw(xt).sum(), xt)
    np.testing.assert_allclose(gt.numpy(), expect, rtol=1e-10)
    gj = jax.vmap(jax.grad(gd.lambertw))(jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(gj), expect, rtol=1e-10)
    assert np.all(np.isfinite(np.asarray(log_lambertw_exp(np.linspace(-100, 100, 201).astype(np.float32)))))
