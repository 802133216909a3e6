"""``gm.uq``: functionals of generated data and (rare) event probabilities, against exact answers.

The truth is always the *fitted* model's own value, computed in closed form from its fitted
parameters, so these tests check the estimators, not the training. Coverage tolerances are
binomial: with R repetitions of a 95% interval, the count covering is Binomial(R, 0.95).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
from scipy import stats

import gmppl as gm

X = np.random.default_rng(0).normal(0.3, 1.2, size=(300, 1)).astype(np.float32)


def numpyro_gaussian():
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        mu = numpyro.param("mu", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(mu, s).expand([1]).to_event(1), obs=x)

    return model


def numpyro_implicit():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        a = numpyro.param("a", 1.5)
        b = numpyro.param("b", 0.5)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
            numpyro.deterministic("x", a * z + b)

    return model


def pyro_implicit():
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        a = pyro.param("a", torch.tensor(1.5))
        b = pyro.param("b", torch.tensor(0.5))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.deterministic("x", a * z + b, event_dim=1)

    return model


@pytest.fixture(scope="module")
def gaussian_fit():
    fit = gm.fit(
        numpyro_gaussian(), X, gm.inference.Likelihood(), steps=200, batch_size=300, optim=gm.optim.Adam(lr=0.05)
    )
    p = fit.program.constrain(fit.program.params)
    return fit, float(p["mu"]), float(p["s"])


def test_tail_probability_interval_covers_at_its_rate(gaussian_fit):
    """``P(x > t)`` with ``P ~ 1e-5`` from 2e4 draws: 30 repetitions of the 95% interval.

    Plain Monte Carlo would see ~0.2 hits; importance sampling must give a relative stderr below
    10% and cover the exact ``1 - Phi((t - mu)/s)`` in at least 25 of 30 repetitions
    (P(Binomial(30, 0.95) <= 24) = 0.0033).
    """
    fit, mu, s = gaussian_fit
    t = mu + s * stats.norm.isf(1e-5)
    truth = stats.norm.sf(t, mu, s)
    covered = 0
    for r in range(30):
        est = gm.uq.probability(fit, lambda x: x[:, 0] > t, 20000, seed=r)
        assert est.method == "importance_density"
        assert est.stderr < 0.1 * truth
        covered += est.interval[0] <= truth <= est.interval[1]
    assert covered >= 25, covered


def test_common_event_uses_monte_carlo(gaussian_fit):
    """``P(x > mu + s)`` by plain Monte Carlo: the exact binomial interval and a 4-sigma check."""
    fit, mu, s = gaussian_fit
    truth = stats.norm.sf(1.0)
    est = gm.uq.probability(fit, lambda x: x[:, 0] > mu + s, 20000, seed=1)
    assert est.method == "monte_carlo" and est.hits > 50
    assert abs(est.value - truth) < 4 * np.sqrt(truth * (1 - truth) / 20000)
    assert est.interval[0] < est.value < est.interval[1]
    assert float(est) == est.value


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_latent_importance_sampling_for_implicit_model(engine):
    """``x = a z + b`` (implicit, no density): ``P(x_0 > t)`` = ``1 - Phi((t - b)/a)``, ~3e-5.

    Eight repetitions: each 95% interval must cover (P(all 8 cover) = 0.66 at the nominal rate;
    at least 6 of 8, P(<= 5) = 0.0058), relative stderr below 10%.
    """
    model = pyro_implicit() if engine == "pyro" else numpyro_implicit()
    fit = gm.fit(model, X.repeat(2, axis=1), gm.inference.Adversarial(), steps=2, batch_size=64)
    if engine == "pyro":
        a, b = (float(fit.program.params()[k].detach()) for k in ("a", "b"))
    else:
        a, b = (float(fit.program.params[k]) for k in ("a", "b"))
    t = b + a * 4.0
    truth = stats.norm.sf(4.0)
    covered = 0
    for r in range(8):
        est = gm.uq.probability(fit, lambda x: x[:, 0] > t, 10000, seed=r)
        assert est.method == "importance_latent"
        assert est.stderr < 0.1 * truth
        covered += est.interval[0] <= truth <= est.interval[1]
    assert covered >= 6, covered
    with pytest.raises(gm.BackendError):
        gm.uq.probability(fit, lambda x: x[:3, 0] > t, 100)


def test_functional_is_the_sampling_distribution(gaussian_fit):
    """``T = mean of m draws`` of N(mu, s^2) has mean mu and sd s/sqrt(m): 100 draws of it.

    Mean within 4 standard errors; the sd within 30% (its relative stderr is 1/sqrt(2*100) = 7%).
    """
    fit, mu, s = gaussian_fit
    m = 400
    t = gm.uq.functional(fit, lambda x: x[:, 0].mean(), m, seed=0, name="mean")
    assert t.dims == ("chain", "draw") and t.shape == (1, 100) and t.name == "mean"
    assert abs(float(t.mean()) - mu) < 4 * s / np.sqrt(m * 100)
    assert abs(float(t.std()) / (s / np.sqrt(m)) - 1) < 0.3
    hdi = az.hdi(t, prob=0.9)
    assert float(hdi.sel(ci_bound="lower")) < mu < float(hdi.sel(ci_bound="upper"))
    assert float(az.mcse(t)) == pytest.approx(float(t.std()) / np.sqrt(float(az.ess(t))), rel=0.2)
    q = gm.uq.functional(fit, lambda x: np.quantile(x, [0.1, 0.9]), m, num_draws=10)
    assert q.shape == (1, 10, 2)
