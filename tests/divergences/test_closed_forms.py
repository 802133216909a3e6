"""Closed forms vs quadrature vs Monte Carlo, on torch, Pyro and NumPyro distribution objects.

Closed form vs quadrature: ``RTOL = 1e-8`` (float64). Closed form vs Monte Carlo: within
``K_SE = 4`` standard errors (about 6e-5 two-sided for a normal estimate; seeds are fixed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import gmppl.divergences as gd
from gmppl.errors import DataError, NotSupported

RTOL = 1e-8
K_SE = 4.0
WITH_NORMAL_FORM = [gd.KL(), gd.ReverseKL(), gd.Pearson(), gd.Neyman(), gd.SquaredHellinger(), gd.Jeffreys()]
NORMAL_IDS = [type(d).__name__ for d in WITH_NORMAL_FORM]
# (loc_p, scale_p, loc_q, scale_q): Pearson needs 2 sq^2 > sp^2 and Neyman 2 sp^2 > sq^2 to be finite
NORMAL_PAIRS = [(0.3, 1.2, -0.5, 1.0), (0.0, 1.0, 2.0, 1.0), (1.0, 0.7, 0.5, 0.8)]


def tnormal(loc, scale):
    return torch.distributions.Normal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))


@pytest.mark.parametrize("d", WITH_NORMAL_FORM, ids=NORMAL_IDS)
@pytest.mark.parametrize("mp, sp, mq, sq", NORMAL_PAIRS)
def test_normal_closed_form_matches_quadrature(d, mp, sp, mq, sq):
    got = d.closed_form(tnormal(mp, sp), tnormal(mq, sq))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    quad = d.quadrature(stats.norm(mp, sp).logpdf, stats.norm(mq, sq).logpdf, -40, 40)
    assert float(got) == pytest.approx(quad, rel=RTOL)


@pytest.mark.parametrize("d", WITH_NORMAL_FORM, ids=NORMAL_IDS)
def test_normal_closed_form_matches_monte_carlo(d):
    mp, sp, mq, sq = 0.3, 1.0, 0.0, 1.1
    rng = np.random.default_rng(3)
    y = rng.normal(mq, sq, 40_000)
    est = d.monte_carlo(stats.norm(mp, sp).logpdf(y) - stats.norm(mq, sq).logpdf(y))
    exact = float(d.closed_form(tnormal(mp, sp), tnormal(mq, sq)))
    assert abs(est.value - exact) < K_SE * est.stderr, (est, exact)
    x = rng.normal(mp, sp, 40_000)  # the same under P: E_P[f(u)/u]
    est_p = d.monte_carlo(stats.norm(mp, sp).logpdf(x) - stats.norm(mq, sq).logpdf(x), under="p")
    assert abs(est_p.value - exact) < K_SE * est_p.stderr, (est_p, exact)


def test_chi_squared_between_normals_is_infinite_when_tails_are_too_light():
    assert float(gd.Pearson().closed_form(tnormal(0, 2.0), tnormal(0, 1.0))) == np.inf  # 2 sq^2 <= sp^2
    assert float(gd.Neyman().closed_form(tnormal(0, 1.0), tnormal(0, 2.0))) == np.inf


def test_diagonal_normal_factorises_over_dimensions():
    loc_p, sc_p = (
        torch.tensor([[0.1, -0.3, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64),
        torch.tensor([0.9, 1.1, 1.0], dtype=torch.float64),
    )
    loc_q, sc_q = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 0.8, 1.2], dtype=torch.float64)
    P = torch.distributions.Independent(torch.distributions.Normal(loc_p, sc_p), 1)
    Q = torch.distributions.Independent(torch.distributions.Normal(loc_q, sc_q), 1)
    p1, q1 = torch.distributions.Normal(loc_p, sc_p), torch.distributions.Normal(loc_q, sc_q)
    kl = gd.KL().closed_form(P, Q)
    assert kl.shape == (2,)
    torch.testing.assert_close(kl, gd.KL().closed_form(p1, q1).sum(-1))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(P, Q))
    h = gd.SquaredHellinger()  # 2 - 2 prod BC_i, BC_i = 1 - H_i / 2
    torch.testing.assert_close(h.closed_form(P, Q), 2 - 2 * torch.prod(1 - h.closed_form(p1, q1) / 2, -1))
    c = gd.Pearson()  # 1 + chi2 multiplies
    torch.testing.assert_close(c.closed_form(P, Q), torch.prod(1 + c.closed_form(p1, q1), -1) - 1)


def test_pyro_distributions_and_to_event():
    import pyro.distributions as pdist

    P = pdist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    Q = pdist.Normal(torch.ones(2, dtype=torch.float64), 2.0).to_event(1)
    want = torch.distributions.kl_divergence(P, Q)
    torch.testing.assert_close(gd.KL().closed_form(P, Q), want)
    b = gd.JensenShannon().closed_form(
        pdist.Bernoulli(logits=torch.tensor(0.3)), pdist.Bernoulli(probs=torch.tensor(0.5))
    )
    assert isinstance(b, torch.Tensor)


def test_numpyro_distributions_give_jax_arrays_with_the_same_values(x64):
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as ndist

    cases = [
        (ndist.Normal(0.3, 1.2), ndist.Normal(-0.5, 1.0), tnormal(0.3, 1.2), tnormal(-0.5, 1.0)),
        (
            ndist.Normal(jnp.zeros(3), 1.0).to_event(1),
            ndist.Normal(jnp.ones(3), 1.5).to_event(1),
            torch.distributions.Independent(tnormal(0.0, 1.0).expand((3,)), 1),
            torch.distributions.Independent(tnormal(1.0, 1.5).expand((3,)), 1),
        ),
        (
            ndist.Bernoulli(probs=0.3),
            ndist.Bernoulli(logits=jnp.log(0.6 / 0.4)),
            torch.distributions.Bernoulli(torch.tensor(0.3, dtype=torch.float64)),
            torch.distributions.Bernoulli(torch.tensor(0.6, dtype=torch.float64)),
        ),
        (
            ndist.Categorical(probs=jnp.array([0.2, 0.3, 0.5])),
            ndist.Categorical(logits=jnp.log(jnp.array([0.4, 0.4, 0.2])) + 3.0),  # unnormalised logits
            torch.distributions.Categorical(probs=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)),
            torch.distributions.Categorical(probs=torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)),
        ),
    ]
    for jp, jq, tp, tq in cases:
        for d in (gd.KL(), gd.SquaredHellinger(), gd.Jeffreys()):
            got = d.closed_form(jp, jq)
            assert isinstance(got, jax.Array)
            assert float(got) == pytest.approx(float(d.closed_form(tp, tq)), rel=1e-12)


def test_probs_and_logits_agree_and_batches_broadcast():
    p = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    q = torch.tensor(0.5, dtype=torch.float64)
    for d in [cls() for cls in gd.FAMILY]:
        a = d.closed_form(torch.distributions.Bernoulli(probs=p), torch.distributions.Bernoulli(probs=q))
        b = d.closed_form(
            torch.distributions.Bernoulli(logits=torch.logit(p)), torch.distributions.Bernoulli(logits=q * 0)
        )
        assert a.shape == (3,)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_constant_float32_parameters_mean_the_decimal_the_user_wrote():
    """torch.distributions.Bernoulli(0.3) stores probs in float32 (0.30000001...), which alone moves
    KL by ~1.5e-8. Constant float32 parameters are widened through their shortest round-trip decimal,
    so the closed form equals the float64 KL(0.3 || 0.6) to float64 precision; parameters with
    gradients keep their dtype and stay differentiable."""
    p, q = 0.3, 0.6
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    got = gd.KL().closed_form(torch.distributions.Bernoulli(p), torch.distributions.Bernoulli(q))
    assert got.dtype == torch.float64
    assert abs(float(got) - kl) < 1e-15
    pg = torch.tensor(p, requires_grad=True)
    got32 = gd.KL().closed_form(torch.distributions.Bernoulli(pg), torch.distributions.Bernoulli(q))
    assert got32.requires_grad
    got32.backward()
    # dKL/dp = log(p/q) - log((1-p)/(1-q)) at the float32 p
    p32 = float(np.float32(p))
    assert abs(float(pg.grad) - (np.log(p32 / q) - np.log((1 - p32) / (1 - q)))) < 1e-5
    got64 = gd.KL().closed_form(
        torch.distributions.Bernoulli(torch.tensor(p, dtype=torch.float64)),
        torch.distributions.Bernoulli(torch.tensor(q, dtype=torch.float64)),
    )
    assert abs(float(got64) - kl) < 1e-15


@pytest.mark.parametrize("d", [gd.JensenShannon(), gd.GAN(), gd.TotalVariation()], ids=["JS", "GAN", "TV"])
def test_no_normal_closed_form_points_to_quadrature(d):
    with pytest.raises(NotSupported, match="quadrature"):
        d.closed_form(tnormal(0.0, 1.0), tnormal(1.0, 1.0))


def test_unsupported_pairs_raise_gmppl_errors():
    with pytest.raises(NotSupported, match="Exponential"):
        gd.KL().closed_form(torch.distributions.Exponential(1.0), torch.distributions.Exponential(2.0))
    with pytest.raises(NotSupported, match="one family"):
        gd.KL().closed_form(tnormal(0.0, 1.0), torch.distributions.Bernoulli(0.5))
    with pytest.raises(DataError, match="outcomes"):
        gd.KL().closed_form(
            torch.distributions.Categorical(probs=torch.ones(3)), torch.distributions.Categorical(probs=torch.ones(4))
        )
    with pytest.raises(DataError, match="event"):
        gd.KL().closed_form(
            torch.distributions.Independent(tnormal(0.0, 1.0).expand((2,)), 1), tnormal(0.0, 1.0).expand((2,))
        )
    assert issubclass(NotSupported, TypeError)


def test_quadrature_accepts_names_split_points_and_infinite_limits():
    lp, lq = stats.norm(0, 1).logpdf, stats.norm(1, 1).logpdf
    assert gd.quadrature("kl", lp, lq) == pytest.approx(0.5, rel=1e-9)
    assert gd.quadrature("kl", lp, lq, -np.inf, np.inf, points=(0.0, 1.0)) == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError):
        gd.quadrature("kl", lp, lq, 1.0, -1.0)
