"""The variational (Fenchel) bound: the Bernoulli worked example of ``docs/design.md``, for every f.

Maximising ``J(a, b) = (1-p) a + p b - (1-q) f*(a) - q f*(b)`` numerically (BFGS, float64)
must give the closed form to ``1e-6`` and the critic ``T* = f'(p/q)`` to ``1e-5``. Monte Carlo
checks use ``K_SE = 4`` standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gmppl.divergences as gd

FAMILY = [cls() for cls in gd.FAMILY]
IDS = [type(d).__name__ for d in FAMILY]
PAIRS = [(0.3, 0.6), (0.1, 0.5), (0.75, 0.2), (0.5, 0.5), (0.02, 0.9)]
K_SE = 4.0


def bernoulli(p: float) -> torch.distributions.Bernoulli:
    return torch.distributions.Bernoulli(torch.tensor(p, dtype=torch.float64))


@pytest.mark.parametrize("p, q", PAIRS)
def test_seed_worked_example_forward_kl(p, q):
    fit = gd.optimise_critic("kl", [1 - p, p], [1 - q, q])
    a_star, b_star = 1 + np.log((1 - p) / (1 - q)), 1 + np.log(p / q)
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    assert fit.critic[0] == pytest.approx(a_star, abs=1e-6)
    assert fit.critic[1] == pytest.approx(b_star, abs=1e-6)
    assert fit.value == pytest.approx(kl, abs=1e-6)
    assert float(gd.KL().closed_form(bernoulli(p), bernoulli(q))) == pytest.approx(kl, abs=1e-14)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
@pytest.mark.parametrize("p, q", PAIRS)
def test_optimised_critic_recovers_closed_form(d, p, q):
    fit = gd.optimise_critic(d, [1 - p, p], [1 - q, q])
    exact = float(d.closed_form(bernoulli(p), bernoulli(q)))
    assert fit.value == pytest.approx(exact, abs=1e-6)
    if not isinstance(d, gd.TotalVariation):  # TV's critic is any subgradient; its bound is still exact
        star = np.asarray(d.f_prime(np.array([(1 - p) / (1 - q), p / q])))
        np.testing.assert_allclose(fit.critic, star, atol=1e-5)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_any_critic_gives_a_lower_bound(d):
    p, q = np.array([0.2, 0.5, 0.3]), np.array([0.4, 0.4, 0.2])
    P = torch.distributions.Categorical(probs=torch.tensor(p))
    Q = torch.distributions.Categorical(probs=torch.tensor(q))
    exact = float(d.closed_form(P, Q))
    rng = np.random.default_rng(0)
    for _ in range(50):
        v = rng.normal(scale=3.0, size=3)
        t = np.asarray(d.activation(v))
        bound = float(np.sum(p * t) - np.sum(q * np.asarray(d.conjugate(t))))
        assert bound <= exact + 1e-12


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_bound_from_logits_equals_bound_of_activation(d):
    rng = np.random.default_rng(1)
    v_p, v_q = rng.normal(size=64), rng.normal(size=(48, 1))
    got = float(d.variational_bound_from_logits(v_p, v_q))
    want = float(d.variational_bound(d.activation(v_p), d.activation(v_q)))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_optimal_critic_on_samples_estimates_divergence(d):
    """P = N(0.3, 1), Q = N(0, 1.2): the bound with T* = f'(p/q) on samples is unbiased for D."""
    from scipy import stats

    P, Q = stats.norm(0.3, 1.0), stats.norm(0.0, 1.2)
    rng = np.random.default_rng(2)
    n = 20_000
    x, y = P.rvs(n, random_state=rng), Q.rvs(n, random_state=rng)
    t_p = np.asarray(d.optimal_critic(P.logpdf(x), Q.logpdf(x)))
    ft_q = np.asarray(d.conjugate(d.optimal_critic(P.logpdf(y), Q.logpdf(y))))
    value = t_p.mean() - ft_q.mean()
    se = np.sqrt(t_p.var(ddof=1) / n + ft_q.var(ddof=1) / n)
    exact = d.quadrature(P.logpdf, Q.logpdf, -30, 30)
    assert abs(value - exact) < K_SE * se + 1e-12, (value, exact, se)
    t_q = d.optimal_critic(P.logpdf(y), Q.logpdf(y))
    assert float(d.variational_bound(t_p, t_q)) == pytest.approx(value, rel=1e-12)
