"""Ensembles: ``gm.fit(..., chains=C)`` trains C independently initialised fits, which become ArviZ chains.

Exact checks: chain 0 starts from the user's module weights and chains c > 0 from fresh draws of
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (fan_in = 1 here); a fit is reproducible from its seed; the
ensemble density is the equal mixture ``log (1/C) sum_c p_c(x)``. Statistical check: R-hat of the
mean of generated data flags chains that have not converged to the same answer (> 1.5 after one
step from different starts) and accepts converged ones (< 1.1).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest

import gmppl as gm

X = np.random.default_rng(0).normal(3.0, 1.0, size=(300, 1)).astype(np.float32)
TINY = gm.optim.Adam(lr=1e-5)


def pyro_linear(seed: int = 0):
    import pyro
    import pyro.distributions as dist
    import torch

    torch.manual_seed(seed)
    lin = torch.nn.Linear(1, 1)

    def model(x=None, n=None):
        net = pyro.module("net", lin)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(net(torch.ones(n, 1)), 1.0).to_event(1), obs=x)

    return model, {"weight": float(lin.weight.detach()), "bias": float(lin.bias.detach())}


def numpyro_linear():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    lin = eqx.nn.Linear(1, 1, key=jax.random.PRNGKey(0))

    def model(x=None, n=None):
        net = eqx_module("net", lin)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(jax.vmap(net)(jnp.ones((n, 1))), 1.0).to_event(1), obs=x)

    return model, {"weight": float(lin.weight[0, 0]), "bias": float(lin.bias[0])}


def weights(fit, c: int) -> dict[str, float]:
    p = fit.programs[c]
    if fit.engine == "pyro":
        with p.scope():
            return {k.split("$$$")[1]: float(v.detach()) for k, v in p.params().items()}
    net = p.params["net$params"]
    return {"weight": float(net.weight[0, 0]), "bias": float(net.bias[0])}


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_chains_start_independently(engine):
    model, init = pyro_linear() if engine == "pyro" else numpyro_linear()
    fit = gm.fit(model, X, gm.inference.Likelihood(), steps=1, batch_size=300, chains=3, optim=TINY, progress=False)
    w = [weights(fit, c) for c in range(3)]
    for k in ("weight", "bias"):
        assert w[0][k] == pytest.approx(init[k], abs=1e-3)  # one step of lr 1e-5 moves a weight by ~1e-5
        assert all(abs(w[c][k]) <= 1.0 + 1e-3 for c in range(3))
    assert len({round(w[c]["bias"], 4) for c in range(3)}) == 3
    assert fit.history["loss"].shape == (3, 1)


def test_reproducible_from_seed():
    fits = [
        gm.fit(pyro_linear(0)[0], X, gm.inference.Likelihood(), steps=5, batch_size=100, chains=2, seed=3)
        for _ in range(2)
    ]
    for c in range(2):
        assert weights(fits[0], c) == weights(fits[1], c)
    np.testing.assert_array_equal(fits[0].history["loss"], fits[1].history["loss"])


def test_rhat_says_whether_training_is_reproducible():
    fn = {"mean": lambda s: s[:, 0].mean()}
    opt = gm.optim.Adam(lr=0.05)
    short = gm.fit(pyro_linear(1)[0], X, gm.inference.Likelihood(), steps=1, batch_size=300, chains=3, optim=opt)
    long = gm.fit(pyro_linear(1)[0], X, gm.inference.Likelihood(), steps=300, batch_size=300, chains=3, optim=opt)
    rhat = {
        name: float(az.rhat(f.to_arviz(functionals=fn, posterior_samples=40, functional_samples=200).posterior)["mean"])
        for name, f in (("short", short), ("long", long))
    }
    assert rhat["short"] > 1.5 and rhat["long"] < 1.1, rhat
    # converged chains: every chain's mean within 0.05 of the data mean (the MLE)
    assert all(abs(sum(weights(long, c).values()) - X.mean()) < 0.05 for c in range(3))


def test_ensemble_density_is_the_mixture():
    fit = gm.fit(pyro_linear(2)[0], X, gm.inference.Likelihood(), steps=1, batch_size=300, chains=3, optim=TINY)
    per_chain = fit.log_prob_chains(X[:20])
    assert per_chain.shape == (3, 20)
    want = np.logaddexp.reduce(per_chain, axis=0) - np.log(3)
    np.testing.assert_allclose(np.asarray(fit.log_prob(X[:20])), want, rtol=1e-6)
    assert np.asarray(fit.sample(50, seed=0)).shape == (50, 1)


def test_jax_chains_run_vmapped_and_match_sequential_fits():
    """NumPyro ensembles train all chains in one vmapped scan; chain c equals a single fit with seed + c
    (plain ``param`` sites are not re-drawn, so the chains differ only by their minibatch streams)."""
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        mu = numpyro.param("mu", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(mu, s).expand([1]).to_event(1), obs=x)

    kw = dict(steps=30, batch_size=32, optim=gm.optim.Adam(lr=0.05), progress=False)
    ens = gm.fit(model, X, gm.inference.Likelihood(), chains=2, seed=5, **kw)
    assert ens.history["loss"].shape == (2, 30)
    for c in range(2):
        one = gm.fit(model, X, gm.inference.Likelihood(), chains=1, seed=5 + c, **kw)
        np.testing.assert_allclose(ens.history["loss"][c], one.history["loss"], rtol=1e-5)
        for k in ("mu", "s"):
            assert float(ens.programs[c].params[k]) == pytest.approx(float(one.program.params[k]), abs=1e-5)
    assert len({round(float(p.params["mu"]), 6) for p in ens.programs}) == 2  # different minibatch streams


# ---------------------------------------------------------------------- PyroModule networks
def pyro_module_linear(seed: int = 0):
    """A ``PyroModule[nn.Linear]`` used as is (its parameters are ``nn.Parameter`` attributes, no ``pyro.module``)."""
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.nn import PyroModule

    torch.manual_seed(seed)
    net = PyroModule[torch.nn.Linear](1, 1)

    def model(x=None, n=None):
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(net(torch.ones(n, 1)), 1.0).to_event(1), obs=x)

    return model, {"weight": float(net.weight.detach()), "bias": float(net.bias.detach())}


def module_weights(fit, c: int) -> dict[str, float]:
    with fit.programs[c].scope():
        return {k: float(v.detach()) for k, v in fit.programs[c].params().items()}


def test_pyro_module_chains_start_independently_and_reproducibly():
    """Chain 0 keeps the module's weights, chains c > 0 re-draw them from ``U(-1, 1)`` (fan_in = 1), and two
    fits from the same seed (fresh modules built alike) agree exactly; another seed gives other chains."""
    kw = dict(steps=1, batch_size=300, chains=3, optim=TINY, progress=False)
    model, init = pyro_module_linear(0)
    fit = gm.fit(model, X, gm.inference.Likelihood(), seed=0, **kw)
    w = [module_weights(fit, c) for c in range(3)]
    assert set(w[0]) == {"weight", "bias"}
    for k in ("weight", "bias"):
        assert w[0][k] == pytest.approx(init[k], abs=1e-3)  # one step of lr 1e-5
        assert all(abs(w[c][k]) <= 1.0 + 1e-3 for c in range(3))
        assert len({round(w[c][k], 4) for c in range(3)}) == 3
    again = gm.fit(pyro_module_linear(0)[0], X, gm.inference.Likelihood(), seed=0, **kw)
    assert [module_weights(again, c) for c in range(3)] == w
    np.testing.assert_array_equal(again.history["loss"], fit.history["loss"])
    other = gm.fit(pyro_module_linear(0)[0], X, gm.inference.Likelihood(), seed=1, **kw)
    assert module_weights(other, 0) == pytest.approx(w[0], abs=1e-3)  # chain 0: the module's own weights
    assert module_weights(other, 1) != pytest.approx(w[1], abs=1e-3)  # chain 1: re-drawn with seed 1 + 1


def test_guide_parameters_are_not_redrawn():
    """An ``AutoNormal`` guide's ``PyroParam``s (a PyroModule's too) keep their own initialisation on every
    chain: scales at ``init_scale`` = 0.1, not a network's uniform draw."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    def model(x=None, n=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).expand([1]).to_event(1), obs=x)

    elbo = gm.inference.ELBO(guide=AutoNormal(model))
    fit = gm.fit(model, X[:30], elbo, steps=1, chains=2, optim=TINY, progress=False)
    for c in range(2):
        with fit.programs[c].scope():
            assert float(pyro.param("AutoNormal.scales.mu").detach()) == pytest.approx(0.1, abs=1e-3)
