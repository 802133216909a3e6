r"""Conformance: every backend on both engines lands on a known answer, with the backend's defaults.

Each case fits a model whose minimiser (or posterior) is known in closed form and checks the fit
against it, on Pyro and on NumPyro. Backends run with their default settings unless a case says
otherwise; the ``gm.fit`` settings (steps, batch size, learning rate) are chosen so that each case
takes a few seconds, and each is stated with the reason. Tolerances come from a stated error: the
optimisation error of full-batch Adam, the stochastic-optimisation spread measured over seeds (with
a margin), or ``Z`` standard errors of a Monte Carlo estimate.

* ``Likelihood`` — ``N(m, diag s^2)``: the maximum-likelihood ``(m, s)`` is the sample mean and the
  biased sample std, exactly. Full batch, Adam(0.05), 500 steps reach them to float32 rounding
  (measured error < 2e-6); ``OPT = 1e-4``.
* ``ELBO`` — ``x = w z + b + s eps``, ``z ~ N(0, 1)``, whose marginal is ``N(b, w^2 + s^2)``: the ML
  fit has ``b = mean(x)`` and ``w^2 + s^2 = var(x)`` (biased), and ``z | x`` is Gaussian with a mean
  linear in ``x`` and a constant variance, which the default amortised guide (an MLP) can represent,
  so the ELBO is tight at the optimum. Default ``ELBO()`` (one-particle ``Trace_ELBO``, the default
  guide); full batch and Adam(0.01) for 1000 steps. Measured over 3 seeds per engine: ``|b - mean|``
  <= 1.2e-3, relative error of the variance <= 4.5e-3, ELBO gap <= 0.014 nats (the prior as guide
  would leave 1.2 nats): tolerances ``ELBO_B = 0.01``, ``ELBO_VAR = 0.02``, ``ELBO_GAP = 0.03`` nats.
* ``Adversarial`` — the location model ``x = z + theta``, ``z ~ N(0, 1)``, fit to 10000 draws of
  ``N(1, 1)``: the family holds the target, so every f-divergence and ``w1`` is minimised at
  ``theta = m`` (the fit sees the data's empirical law: ``theta`` is compared with the sample mean,
  itself within ``4 / sqrt(10000) = 0.04`` of ``m = 1``). Default critic (the 2x128 MLP), critic
  steps, penalties and ``ema``; changed: the generator's Adam learning rate 3e-3 (the default 2e-4
  needs 5000 steps to move ``theta`` by 1) and the critic's 1e-3 — a critic as fast as the generator
  left Neyman 0.08-0.63 from ``m`` in 4 of 12 runs (with the slower critic every divergence
  converged). 1500 steps of 128 + 128 examples. Measured over 6 seeds per engine and divergence:
  ``|theta - mean| <= 0.013`` for every divergence but total variation (<= 0.055: TV's objective has
  a kink at its minimiser, so the iterates keep circling it). Tolerances ``ADV_ATOL = 0.05`` and
  ``ADV_ATOL_TV = 0.15``, about three times the largest error measured.
* ``Score`` (sliced, ``Score(method="sliced")``, one projection, variance reduction) — the Gaussian
  model above: the expected SSM-VR loss is minimised at the sample mean and the biased std, exactly
  (Hyvarinen 2005). ``m``'s gradient has no projection noise (``OPT``); ``s``'s has: measured relative
  error <= 0.015 over 4 seeds per engine, ``SLICED_S = 0.05``. Full batch, Adam(0.02), 1000 steps.
* ``Score`` (DSM, the default for a ``gm.models.Diffusion``) — a 1-D ``N(1, 0.5^2)`` target with a
  small score MLP: the sample mean and sd of 4000 draws (reverse SDE) within ``Z`` standard errors
  plus the network's error, measured <= 0.027 (mean) and <= 0.017 (sd) over 3 seeds per engine;
  ``DSM_BIAS = 0.06``. Batch 1024 (the DSM gradient is noisy in ``t``), default Adam, 2000 steps.
* ``NUTS`` — the conjugate Normal–inverse-gamma model ``sigma^2 ~ InvGamma(a0, b0)``,
  ``mu | sigma^2 ~ N(0, sigma^2 / k0)``, ``x_i ~ N(mu, sigma^2)``: posterior means and sds of ``mu`` and
  ``sigma^2`` in closed form, checked within ``Z`` Monte Carlo standard errors (ArviZ's ESS-based
  ``mcse``). Default ``NUTS()``, 2 chains of 1000 draws (slow: Pyro's NUTS takes ~10 ms a draw here); in
  the default suite one chain of 200 draws after 150 warm-up steps.

Fast cases (one or more per backend and engine) run in the default suite; the other divergences and
DSM are ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import gmppl as gm
from gmppl.divergences import FAMILY

ENGINES = ["pyro", "numpyro"]
Z = 4.0  # standard errors allowed for a Monte Carlo estimate
OPT = 1e-4  # full-batch Adam's error on a smooth convex problem after the stated steps (float32)
ELBO_B, ELBO_VAR, ELBO_GAP = 0.01, 0.02, 0.03
ADV_ATOL, ADV_ATOL_TV = 0.05, 0.15
SLICED_S = 0.05
DSM_BIAS = 0.06


def scalar(a) -> float:
    return float(np.asarray(a).reshape(()))


# ---------------------------------------------------------------------- Gaussian N(m, diag s^2)
def gaussian(engine: str):
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        def model(x=None, n=None):
            m = pyro.param("m", torch.zeros(2))
            s = pyro.param("s", torch.ones(2), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", dist.Normal(m, s).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        m = numpyro.param("m", jnp.zeros(2))
        s = numpyro.param("s", jnp.ones(2), constraint=dist.constraints.positive)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(m, s).to_event(1), obs=x)

    return model


def gaussian_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(1000, 2)) * [0.8, 1.5] + [1.0, -1.0]).astype(np.float32)


@pytest.mark.parametrize("engine", ENGINES)
def test_likelihood_finds_the_sample_moments(engine: str) -> None:
    x = gaussian_data()
    fit = gm.fit(
        gaussian(engine), x, gm.inference.Likelihood(), steps=500, batch_size=len(x), optim=0.05, progress=False
    )
    xd = x.astype(np.float64)
    np.testing.assert_allclose(fit.params["m"], xd.mean(0), atol=OPT)
    np.testing.assert_allclose(fit.params["s"], xd.std(0), atol=OPT)


@pytest.mark.parametrize("engine", ENGINES)
def test_sliced_score_matching_finds_the_sample_moments(engine: str) -> None:
    x = gaussian_data()
    backend = gm.inference.Score(method="sliced")
    fit = gm.fit(gaussian(engine), x, backend, steps=1000, batch_size=len(x), optim=0.02, progress=False)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(fit.params["m"], xd.mean(0), atol=OPT)
    np.testing.assert_allclose(fit.params["s"], xd.std(0), rtol=SLICED_S)


# ---------------------------------------------------------------------- ELBO: x = w z + b + s eps
def linear_gaussian(engine: str):
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        def model(x=None, n=None):
            w = pyro.param("w", torch.tensor(1.0))
            b = pyro.param("b", torch.tensor(0.0))
            s = pyro.param("s", torch.tensor(0.7), constraint=constraints.positive)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(w * z + b, s).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        w = numpyro.param("w", 1.0)
        b = numpyro.param("b", 0.0)
        s = numpyro.param("s", 0.7, constraint=dist.constraints.positive)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(w * z + b, s).to_event(1), obs=x)

    return model


@pytest.mark.parametrize("engine", ENGINES)
def test_elbo_finds_the_marginal_likelihood_maximum_and_is_tight(engine: str) -> None:
    n = 1000
    rng = np.random.default_rng(0)
    x = (2.0 + 1.5 * rng.normal(size=(n, 1)) + 0.5 * rng.normal(size=(n, 1))).astype(np.float32)
    fit = gm.fit(linear_gaussian(engine), x, gm.inference.ELBO(), steps=1000, batch_size=n, optim=0.01, progress=False)
    w, b, s = (scalar(fit.params[k]) for k in ("w", "b", "s"))
    xd = x[:, 0].astype(np.float64)
    var = w * w + s * s
    assert abs(b - xd.mean()) <= ELBO_B, (b, xd.mean())
    assert abs(var / xd.var() - 1) <= ELBO_VAR, (var, xd.var())
    exact = stats.norm.logpdf(xd, b, np.sqrt(var))  # log p(x_i) at the fitted parameters
    lp = fit.log_prob(x, num_particles=100)
    # ELBO_i = log p(x_i) - KL(q(z|x_i) || p(z|x_i)) <= log p(x_i); its estimate's error is Monte Carlo
    gap = exact - lp.elbo
    se_gap = gap.std(ddof=1) / np.sqrt(n)
    assert -Z * se_gap <= gap.mean() <= ELBO_GAP + Z * se_gap, (gap.mean(), se_gap)
    # and the importance-weighted estimate of log p(x) is unbiased up to its stated stderr
    se = np.sqrt(np.sum(lp.stderr**2)) / n
    assert abs(lp.value.mean() - exact.mean()) <= Z * se + 1e-4, (lp.value.mean(), exact.mean(), se)


# ---------------------------------------------------------------------- Adversarial: x = z + theta
ADV_M, ADV_N = 1.0, 10000
ADV_STEPS, ADV_LR, ADV_CRITIC_LR = 1500, 3e-3, 1e-3


def location(engine: str):
    """``x = z + theta`` with a plain ``param`` (nothing to re-draw for an ensemble's chains)."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            theta = pyro.param("theta", torch.zeros(1))
            n = x.shape[0] if x is not None else n
            with pyro.plate("data", n):
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
                pyro.deterministic("x", z + theta, event_dim=1)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        theta = numpyro.param("theta", jnp.zeros(1))
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
            numpyro.deterministic("x", z + theta)

    return model


@pytest.fixture(scope="module")
def location_data() -> np.ndarray:
    return (ADV_M + np.random.default_rng(0).normal(size=(ADV_N, 1))).astype(np.float32)


def adversarial(name: str) -> gm.inference.Adversarial:
    """Defaults but the learning rates (see the module notes), keeping the default Adam betas."""
    betas = gm.inference.Adversarial(name).default_optim.betas
    return gm.inference.Adversarial(name, critic_optim=gm.optim.Adam(ADV_CRITIC_LR, betas=betas))


def fit_location(engine: str, name: str, x: np.ndarray, **kw) -> gm.Fit:
    backend = adversarial(name)
    optim = gm.optim.Adam(ADV_LR, betas=backend.default_optim.betas)
    kw = {"steps": ADV_STEPS, "batch_size": 128, "seed": 0, "progress": False, **kw}
    return gm.fit(location(engine), x, backend, optim=optim, **kw)


FAST = {"js"}
DIVERGENCES = [c.name for c in FAMILY] + ["w1"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in DIVERGENCES])
def test_adversarial_finds_the_location_for_every_divergence(engine: str, name: str, location_data) -> None:
    fit = fit_location(engine, name, location_data)
    assert np.all(np.isfinite(fit.history["divergence"]))
    theta = scalar(fit.params["theta"])
    atol = ADV_ATOL_TV if name == "total_variation" else ADV_ATOL
    assert abs(theta - float(location_data.astype(np.float64).mean())) <= atol, (name, theta)


def test_jax_adversarial_ensemble_equals_separate_fits(location_data) -> None:
    """chains=2 is one vmapped scan; chain c equals the single-chain fit with seed + c (the same critic
    initialisation, minibatches and noise), up to float reassociation."""
    kw = {"steps": 100, "batch_size": 64}
    ens = fit_location("numpyro", "js", location_data, chains=2, seed=3, **kw)
    assert ens.history["loss"].shape == (2, 100)
    thetas = []
    for c in range(2):
        one = fit_location("numpyro", "js", location_data, chains=1, seed=3 + c, **kw)
        for k in ("loss", "critic_loss", "divergence"):
            np.testing.assert_allclose(ens.history[k][c], one.history[k], rtol=1e-4, atol=1e-5, err_msg=k)
        for k, v in one.params.items():
            np.testing.assert_allclose(ens.params[k][c], v, rtol=1e-4, atol=1e-5, err_msg=k)
        thetas.append(scalar(one.params["theta"]))
    assert abs(thetas[0] - thetas[1]) > 1e-4  # the two chains are different fits


# ---------------------------------------------------------------------- Score: DSM on a diffusion
@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_dsm_diffusion_samples_have_the_data_moments(engine: str) -> None:
    m, sd, n = 1.0, 0.5, 4000
    x = (m + sd * np.random.default_rng(0).normal(size=(n, 1))).astype(np.float32)
    if engine == "pyro":
        import pyro

        net0 = gm.models.ScoreMLP(1, width=64, depth=3)

        def model(x=None, n=None):
            net = pyro.module("score", net0)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)
    else:
        import jax
        import numpyro
        from numpyro.contrib.module import eqx_module

        net0 = gm.models.ScoreMLP(1, width=64, depth=3, key=jax.random.PRNGKey(0))

        def model(x=None, n=None):
            net = eqx_module("score", net0)
            with numpyro.plate("data", x.shape[0] if x is not None else n):
                numpyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)

    fit = gm.fit(model, x, gm.inference.Score(), steps=2000, batch_size=1024, seed=0, progress=False)
    draws = np.asarray(fit.sample(n, seed=1), dtype=np.float64)[:, 0]
    xd = x[:, 0].astype(np.float64)
    se_mean = np.sqrt(xd.var() / n + draws.var() / n)  # two independent samples
    assert abs(draws.mean() - xd.mean()) <= Z * se_mean + DSM_BIAS, (draws.mean(), xd.mean())
    se_sd = np.sqrt(xd.var() / (2 * n) + draws.var() / (2 * n))  # sd of a Gaussian sample's sd: sd / sqrt(2n)
    assert abs(draws.std() - xd.std()) <= Z * se_sd + DSM_BIAS, (draws.std(), xd.std())


# ---------------------------------------------------------------------- NUTS: Normal-inverse-gamma
A0, B0, K0 = 3.0, 2.0, 1.0


def normal_inverse_gamma(engine: str):
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist

        def model(x=None, n=None):
            s2 = pyro.sample("sigma2", dist.InverseGamma(A0, B0))
            mu = pyro.sample("mu", dist.Normal(0.0, (s2 / K0).sqrt()))
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", dist.Normal(mu, s2.sqrt()).expand([1]).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        s2 = numpyro.sample("sigma2", dist.InverseGamma(A0, B0))
        mu = numpyro.sample("mu", dist.Normal(0.0, jnp.sqrt(s2 / K0)))
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(mu, jnp.sqrt(s2)).expand([1]).to_event(1), obs=x)

    return model


def nig_posterior(x: np.ndarray) -> dict[str, tuple[float, float]]:
    """Posterior (mean, sd) of ``mu`` (a Student t) and ``sigma^2`` (an inverse gamma), closed form."""
    x = x.astype(np.float64).reshape(-1)
    n, xbar = len(x), x.mean()
    kn, an = K0 + n, A0 + n / 2
    mn = n * xbar / kn
    bn = B0 + 0.5 * np.sum((x - xbar) ** 2) + K0 * n * xbar**2 / (2 * kn)
    return {
        "mu": (mn, np.sqrt(bn / ((an - 1) * kn))),
        "sigma2": (bn / (an - 1), bn / ((an - 1) * np.sqrt(an - 2))),
    }


@pytest.mark.parametrize(
    ("engine", "backend", "steps", "chains"),
    [
        ("pyro", gm.inference.NUTS(num_warmup=150), 200, 1),
        ("numpyro", gm.inference.NUTS(num_warmup=150), 200, 1),
        pytest.param("pyro", gm.inference.NUTS(), 1000, 2, marks=pytest.mark.slow),
        pytest.param("numpyro", gm.inference.NUTS(), 1000, 2, marks=pytest.mark.slow),
    ],
    ids=["pyro-short", "numpyro-short", "pyro-defaults", "numpyro-defaults"],
)
def test_nuts_gives_the_conjugate_posterior(engine: str, backend, steps: int, chains: int) -> None:
    """Both parameters within ``Z`` ESS-based Monte Carlo standard errors of the closed form (mean and sd)."""
    import arviz as az

    x = (1.5 + 0.8 * np.random.default_rng(0).normal(size=(50, 1))).astype(np.float32)
    fit = gm.fit(normal_inverse_gamma(engine), x, backend, steps=steps, chains=chains, seed=0, progress=False)
    tree = fit.to_arviz()
    for name, (mean, sd) in nig_posterior(x).items():
        draws = tree.posterior[name]
        assert draws.shape == (chains, steps)
        se_mean = float(az.mcse(tree, var_names=[name], method="mean")[name])
        se_sd = float(az.mcse(tree, var_names=[name], method="sd")[name])
        assert abs(float(draws.mean()) - mean) <= Z * se_mean, (name, float(draws.mean()), mean, se_mean)
        assert abs(float(draws.std()) - sd) <= Z * se_sd, (name, float(draws.std()), sd, se_sd)
