"""gm.fit end to end on models with closed-form answers, both engines; isolation; engine detection."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm

RTOL_MLE = 2e-2  # Adam to convergence on a convex problem: optimisation error, not Monte Carlo


def pyro_gauss():
    import pyro
    import pyro.distributions as dist
    import torch
    from torch.distributions import constraints

    def model(x=None, n=None):
        mu = pyro.param("mu", torch.zeros(2))
        s = pyro.param("s", torch.ones(2), constraint=constraints.positive)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)

    return model


def numpyro_gauss():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        mu = numpyro.param("mu", jnp.zeros(2))
        s = numpyro.param("s", jnp.ones(2), constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)

    return model


@pytest.fixture
def gauss_data() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(size=(400, 2)) * np.array([0.5, 2.0]) + np.array([1.0, -3.0])).astype(np.float32)


@pytest.mark.parametrize("make", [pyro_gauss, numpyro_gauss], ids=["pyro", "numpyro"])
def test_likelihood_recovers_gaussian_mle(make, gauss_data):
    """MLE of N(mu, diag s^2) is the sample mean and the (biased) sample std: exact answers."""
    fit = gm.fit(
        make(),
        gauss_data,
        gm.inference.Likelihood(),
        steps=1500,
        batch_size=400,
        optim=gm.optim.Adam(lr=0.05),
        progress=False,
    )
    x = gauss_data.astype(np.float64)
    mu, sd = x.mean(0), x.std(0)
    exact = -0.5 * (((x - mu) / sd) ** 2).sum(1) - np.log(sd).sum() - np.log(2 * np.pi)
    got = np.asarray(fit.log_prob(gauss_data))
    np.testing.assert_allclose(got.mean(), exact.mean(), rtol=RTOL_MLE)
    assert got.shape == (400,)
    draws = np.asarray(fit.sample(20000, seed=0))
    # 20000 draws: mean within 4 standard errors (sd / sqrt(n)) plus optimisation tolerance
    np.testing.assert_allclose(draws.mean(0), mu, atol=4 * sd.max() / np.sqrt(20000) + 0.02)
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.05)
    assert fit.history["loss"].shape == (1500,)
    assert fit.history["loss"][-1] < fit.history["loss"][0]


def test_engines_agree_on_the_same_model(gauss_data):
    kw = dict(steps=1500, batch_size=400, optim=gm.optim.Adam(lr=0.05), progress=False)
    a = gm.fit(pyro_gauss(), gauss_data, gm.inference.Likelihood(), **kw)
    b = gm.fit(numpyro_gauss(), gauss_data, gm.inference.Likelihood(), **kw)
    np.testing.assert_allclose(np.asarray(a.log_prob(gauss_data)), np.asarray(b.log_prob(gauss_data)), atol=2e-2)


def test_engine_detection_and_forcing(gauss_data):
    from gmppl.engines import detect_engine

    assert detect_engine(pyro_gauss(), gauss_data[:4]) == "pyro"
    assert detect_engine(numpyro_gauss(), gauss_data[:4]) == "numpyro"
    fit = gm.fit(numpyro_gauss(), gauss_data, gm.inference.Likelihood(), steps=2, engine="numpyro", progress=False)
    assert fit.engine == "numpyro"


def test_fits_are_isolated_from_the_global_param_store(gauss_data):
    """Two fits of programs with the same param names never share values."""
    import pyro

    kw = dict(batch_size=400, optim=gm.optim.Adam(lr=0.05), progress=False)
    a = gm.fit(pyro_gauss(), gauss_data, gm.inference.Likelihood(), steps=300, **kw)
    before = np.asarray(a.log_prob(gauss_data[:10])).copy()
    b = gm.fit(pyro_gauss(), gauss_data * 3 + 5, gm.inference.Likelihood(), steps=300, **kw)
    np.testing.assert_array_equal(np.asarray(a.log_prob(gauss_data[:10])), before)
    assert not np.allclose(np.asarray(b.log_prob(gauss_data[:10])), before)
    assert "mu" not in pyro.get_param_store()  # nothing leaked into the global store


def test_same_module_fitted_twice_keeps_each_fit(moons):
    """A torch module shared by two fits: each Fit keeps its own trained values."""
    import pyro
    import pyro.distributions as dist
    import pyro.distributions.transforms as T
    import torch

    flow = T.affine_coupling(2, hidden_dims=[16])

    def model(x=None, n=None):
        pyro.module("flow", flow)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", gm.models.Pushforward(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow), obs=x)

    a = gm.fit(model, moons, gm.inference.Likelihood(), steps=60, batch_size=128, progress=False)
    la = np.asarray(a.log_prob(moons[:20])).copy()
    b = gm.fit(model, moons[::-1] * 2, gm.inference.Likelihood(), steps=60, batch_size=128, seed=3, progress=False)
    lb = np.asarray(b.log_prob(moons[:20])).copy()
    np.testing.assert_allclose(np.asarray(a.log_prob(moons[:20])), la, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b.log_prob(moons[:20])), lb, rtol=1e-6)
    assert not np.allclose(la, lb)


def test_flow_posterior_is_the_inverse(moons):
    import pyro
    import pyro.distributions as dist
    import pyro.distributions.transforms as T
    import torch

    flow = T.affine_coupling(2, hidden_dims=[16])

    def model(x=None, n=None):
        pyro.module("flow", flow)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", gm.models.Pushforward(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow), obs=x)

    fit = gm.fit(model, moons, gm.inference.Likelihood(), steps=5, progress=False)
    z = np.asarray(fit.posterior(moons[:7], num_samples=3))
    assert z.shape == (3, 7, 2)
    fit.write_back()  # the fitted flow into `flow` (a fit leaves the caller's module as it was)
    back = flow(torch.as_tensor(z[0])).detach().numpy()
    np.testing.assert_allclose(back, moons[:7], atol=1e-5)


def test_callbacks_and_history(gauss_data):
    seen = []
    fit = gm.fit(
        numpyro_gauss(),
        gauss_data,
        gm.inference.Likelihood(),
        steps=250,
        batch_size=64,
        callbacks=[lambda step, m: seen.append((step, m["loss"]))],
        progress=False,
    )
    assert [s for s, _ in seen] == [100, 200, 250]
    assert set(fit.history) >= {"loss", "grad_norm"}
    assert np.all(np.isfinite(fit.history["loss"]))
