"""ELBO backend: exact answers on probabilistic PCA, engine agreement on a VAE, objectives, guides, bad input.

Probabilistic PCA with one latent dimension, ``x = W z + mu + N(0, s^2 I)``, has

* the marginal ``x ~ N(mu, W W^T + s^2 I)``, maximised in closed form (Tipping & Bishop, 1999);
* the posterior ``z | x ~ N(W^T (x - mu) / M, s^2 / M)`` with ``M = W^T W + s^2`` — a linear
  function of ``x`` and a constant variance, which a linear ``AmortizedNormal(hidden=())`` holds
  exactly, so the ELBO has no gap at its optimum and every objective shares the optimum.

Tolerances: ``OPT_*`` are optimisation errors of Adam after the stated steps (full batch), not Monte
Carlo noise; Monte Carlo comparisons use ``Z`` standard errors.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import gmppl as gm

Z = 4.0  # standard errors allowed for a Monte Carlo estimate
OPT_LOGLIK = 2e-3  # nats per example between the fitted and the maximum log-likelihood
OPT_MEAN = 0.02  # posterior mean (the posterior sd is 0.21): 10% of a posterior sd
OPT_VAR = 0.05  # relative error of the posterior variance
FLOAT32 = 1e-3  # float32 evaluation of log-densities of size ~5 nats

W_TRUE = np.array([[2.0], [1.0], [-0.5]])
MU_TRUE = np.array([1.0, -1.0, 0.5])
S_TRUE = 0.5


def ppca_data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1)) @ W_TRUE.T + MU_TRUE + S_TRUE * rng.normal(size=(n, 3))
    return x.astype(np.float32)


INIT = (0.3 * np.ones((3, 1)), np.zeros(3), 1.0)


def pyro_ppca(init=INIT):
    import pyro
    import pyro.distributions as dist
    import torch
    from torch.distributions import constraints

    W0, mu0, s0 = (torch.tensor(v, dtype=torch.float32) for v in init)

    def model(x=None, n=None):
        W = pyro.param("W", W0.clone())
        mu = pyro.param("mu", mu0.clone())
        s = pyro.param("s", s0.clone(), constraint=constraints.positive)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + mu, s).to_event(1), obs=x)

    return model


def numpyro_ppca(init=INIT):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    W0, mu0, s0 = (jnp.asarray(v, dtype=jnp.float32) for v in init)

    def model(x=None, n=None):
        W = numpyro.param("W", W0)
        mu = numpyro.param("mu", mu0)
        s = numpyro.param("s", s0, constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(z @ W.T + mu, s).to_event(1), obs=x)

    return model


PPCA = {"pyro": pyro_ppca, "numpyro": numpyro_ppca}


def fitted(fit: gm.Fit) -> tuple[np.ndarray, np.ndarray, float]:
    """The fitted ``(W, mu, s)``, constrained, in float64."""
    if fit.engine == "pyro":
        import pyro

        with fit.program.scope():
            p = {k: pyro.param(k).detach().cpu().numpy().astype(float) for k in ("W", "mu", "s")}
    else:
        c = fit.program.constrain(fit.program.params)
        p = {k: np.asarray(c[k], dtype=float) for k in ("W", "mu", "s")}
    return p["W"], p["mu"], float(p["s"])


def exact_loglik(x: np.ndarray, W: np.ndarray, mu: np.ndarray, s: float) -> np.ndarray:
    from scipy.stats import multivariate_normal

    return multivariate_normal(mu, W @ W.T + s**2 * np.eye(len(mu))).logpdf(x.astype(float))


def exact_posterior(x: np.ndarray, W: np.ndarray, mu: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    M = float((W.T @ W)[0, 0]) + s**2
    return (x.astype(float) - mu) @ W[:, 0] / M, s**2 / M


def ppca_mle(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Tipping & Bishop's closed form: ``W = u_1 sqrt(l_1 - s^2)``, ``s^2`` the mean discarded eigenvalue."""
    x = x.astype(float)
    lam, U = np.linalg.eigh(np.cov(x.T, bias=True))
    s2 = lam[:-1].mean()
    return U[:, -1:] * np.sqrt(lam[-1] - s2), x.mean(0), float(np.sqrt(s2))


def fit_ppca(engine: str, *, objective: str = "meanfield", particles: int = 16, steps: int = 3000, lr: float = 3e-3):
    x = ppca_data(600, seed=0)
    backend = gm.inference.ELBO(
        guide=gm.models.AmortizedNormal(hidden=()), objective=objective, num_particles=particles, alpha=0.5
    )
    return gm.fit(
        PPCA[engine](), x, backend, steps=steps, batch_size=len(x), optim=gm.optim.Adam(lr=lr), progress=False
    )


# ---------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_ppca_encoder_is_the_exact_posterior_and_iwae_the_exact_loglik(engine):
    fit = fit_ppca(engine)
    W, mu, s = fitted(fit)
    x_test = ppca_data(20, seed=1)

    mean, var = exact_posterior(x_test, W, mu, s)
    draws = 100_000
    z = np.asarray(fit.posterior(x_test, num_samples=draws, seed=0), dtype=float)
    assert z.shape == (draws, 20, 1)
    z = z[..., 0]
    assert np.abs(z.mean(0) - mean).max() <= OPT_MEAN + Z * np.sqrt(var / draws)
    assert np.abs(z.var(0) / var - 1).max() <= OPT_VAR + Z * np.sqrt(2 / draws)

    lp = fit.log_prob(x_test, num_particles=2000)
    exact = exact_loglik(x_test, W, mu, s)
    assert lp.is_estimate and np.asarray(lp).shape == (20,)
    assert np.all(np.abs(np.asarray(lp) - exact) <= Z * lp.stderr + FLOAT32)
    # the guide is (nearly) exact, so the ELBO itself is (nearly) tight
    assert np.all(exact - lp.elbo >= -FLOAT32 - Z * lp.stderr) and np.mean(exact - lp.elbo) < 0.05


def fixed_ppca_with_shifted_guide(engine: str, shift: float = 0.3, widen: float = 2.0):
    """PPCA at the true parameters, and a guide ``N(mean(x) + shift, (widen * sd)^2)`` around the exact
    posterior: inexact, and wider than the posterior, so the importance weights have finite variance."""
    mean_w = W_TRUE[:, 0] / (float((W_TRUE.T @ W_TRUE)[0, 0]) + S_TRUE**2)
    sd = widen * np.sqrt(exact_posterior(np.zeros((1, 3)), W_TRUE, MU_TRUE, S_TRUE)[1])
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        w, m0 = torch.tensor(mean_w, dtype=torch.float32), torch.tensor(MU_TRUE, dtype=torch.float32)

        def guide(x=None, n=None):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(((x - m0) @ w + shift)[:, None], sd).to_event(1))

    else:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        w, m0 = jnp.asarray(mean_w, dtype=jnp.float32), jnp.asarray(MU_TRUE, dtype=jnp.float32)

        def guide(x=None, n=None):
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("z", dist.Normal(((x - m0) @ w + shift)[:, None], sd).to_event(1))

    return guide


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_iwae_estimate_is_within_its_stderr_for_an_inexact_guide(engine):
    x = ppca_data(30, seed=2)
    guide = fixed_ppca_with_shifted_guide(engine)
    # one step at a negligible rate: the model stays at the true parameters it starts from
    fit = gm.fit(
        PPCA[engine]((W_TRUE, MU_TRUE, S_TRUE)), x, gm.inference.ELBO(guide=guide), steps=1, optim=1e-12, progress=False
    )
    W, mu, s = fitted(fit)
    lp = fit.log_prob(x, num_particles=5000, seed=3)
    exact = exact_loglik(x, W, mu, s)
    err = np.asarray(lp) - exact
    assert lp.stderr.min() > 1e-3  # a real test of the error bar, not of an exact guide
    # the bias of the log of a mean is about -stderr^2 / 2
    assert np.all(np.abs(err) <= Z * lp.stderr + lp.stderr**2), np.c_[err, lp.stderr]
    assert np.mean(np.abs(err / lp.stderr)) < 1.5  # calibrated, not merely wide (E|N(0,1)| = 0.8)
    assert np.all(lp.elbo < exact)  # the guide is inexact: the ELBO has a gap


def exact_linear_encoder(engine: str, W: np.ndarray, mu: np.ndarray, s: float, min_scale: float = 1e-5):
    """A linear ``AmortizedNormal`` encoder set to PPCA's exact posterior ``N(W^T (x - mu) / M, s^2 / M)``."""
    M = float((W.T @ W)[0, 0]) + s**2
    weight = np.stack([W[:, 0] / M, np.zeros(len(mu))])
    bias = np.array([-mu @ W[:, 0] / M, np.log(np.expm1(np.sqrt(s**2 / M) - min_scale))])
    if engine == "pyro":
        import torch

        enc = torch.nn.Linear(len(mu), 2)
        with torch.no_grad():
            enc.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            enc.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return enc
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    enc = eqx.nn.Linear(len(mu), 2, key=jax.random.PRNGKey(0))
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), enc, (jnp.asarray(weight, jnp.float32), jnp.asarray(bias, jnp.float32))
    )


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_exact_guide_gives_uniform_weights_for_loo_approximate_posterior(engine):
    """``to_arviz(x)`` with ``q`` the exact posterior (set, not fitted: ``lr=0``): for every joint draw
    ``z_s``, ``log p(x, z_s) - log q(z_s | x) = sum_i log p(x_i)``, the PPCA marginal, so PSIS-LOO with the
    approximate-posterior correction reweights nothing and equals plain ``az.loo``. Each stored quantity
    is also checked against its closed form at the stored draws (float32 tolerances)."""
    import warnings

    import arviz as az
    from scipy.stats import norm

    W, mu, s = np.asarray(INIT[0], dtype=float), np.asarray(INIT[1], dtype=float), float(INIT[2])
    x, x_test, draws = ppca_data(100, seed=0), ppca_data(30, seed=1), 50
    guide = gm.models.AmortizedNormal(encoder=exact_linear_encoder(engine, W, mu, s))
    fit = gm.fit(
        PPCA[engine](), x, gm.inference.ELBO(guide=guide), steps=1, optim=gm.optim.Adam(lr=0.0), progress=False
    )
    tree = fit.to_arviz(x_test, num_samples=10, posterior_samples=draws)

    z = tree.posterior["z"]
    assert z.dims == ("chain", "draw", "obs", "z_dim") and z.shape == (1, draws, 30, 1)
    z = z.values[0, :, :, 0].astype(float)
    ll = tree.log_likelihood["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (1, draws, 30)
    want_ll = norm.logpdf(x_test[None].astype(float), z[..., None] * W[:, 0] + mu, s).sum(-1)
    np.testing.assert_allclose(ll.values[0], want_ll, atol=FLOAT32)
    mean, var = exact_posterior(x_test, W, mu, s)
    ap = tree.approximate_posterior
    assert ap["log_p"].dims == ("chain", "draw") and ap["log_q"].shape == (1, draws)
    np.testing.assert_allclose(ap["log_q"].values[0], norm.logpdf(z, mean, np.sqrt(var)).sum(-1), atol=30 * FLOAT32)
    np.testing.assert_allclose(ap["log_p"].values[0], (want_ll + norm.logpdf(z)).sum(-1), atol=30 * FLOAT32)
    marginal = exact_loglik(x_test, W, mu, s)
    np.testing.assert_allclose((ap["log_p"] - ap["log_q"]).values[0], marginal.sum(), atol=30 * FLOAT32)
    np.testing.assert_allclose(ap["log_weight"].values[0], np.broadcast_to(marginal, (draws, 30)), atol=FLOAT32)
    # every importance weight is p(x_i): the IWAE estimates are exact
    np.testing.assert_allclose(tree.log_marginal_likelihood["x"].values[0, 0], marginal, atol=FLOAT32)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k warnings: the harmonic-mean tail of 1 / p(x_i | z)
        loo_q = az.loo_approximate_posterior(tree, ap["log_p"], ap["log_q"])
        loo = az.loo(tree)
    assert np.isfinite(loo_q.elpd) and loo_q.approx_posterior
    assert loo_q.elpd == pytest.approx(loo.elpd, abs=1e-4)  # uniform weights: no correction


@pytest.mark.parametrize("objective", ["trace", "meanfield", "renyi", "iwae"])
@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_every_objective_reaches_the_ppca_maximum_likelihood(engine, objective):
    particles = 1 if objective in ("trace", "meanfield") else 8
    fit = fit_ppca(engine, objective=objective, particles=particles, steps=1500, lr=2e-2)
    x = ppca_data(600, seed=0)
    best = exact_loglik(x, *ppca_mle(x)).mean()
    got = exact_loglik(x, *fitted(fit)).mean()
    assert best - OPT_LOGLIK <= got <= best + 1e-9, (got, best)
    assert np.isfinite(fit.history["loss"]).all()


# ---------------------------------------------------------------------- a VAE on both engines
def pyro_vae(seed: int = 0, hidden: int = 64, latent: int = 4):
    import pyro
    import pyro.distributions as dist
    import torch

    torch.manual_seed(seed)
    dec = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 64))

    def model(x=None, n=None):
        d = pyro.module("decoder", dec)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=d(z)).to_event(1), obs=x)

    return model


def numpyro_vae(seed: int = 0, hidden: int = 64, latent: int = 4):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    dec = eqx.nn.MLP(latent, 64, hidden, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(seed))

    def model(x=None, n=None):
        d = eqx_module("decoder", dec)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=jax.vmap(d)(z)).to_event(1), obs=x)

    return model


@pytest.fixture(scope="module")
def binary_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0 > 0.5).astype(np.float32)


def test_pyro_and_numpyro_vaes_agree_on_test_elbo(binary_digits):
    """The same VAE (64-64-4 encoder and decoder, Bernoulli) on both engines, three seeds each:
    the mean test ELBOs agree within the seed-to-seed spread."""
    x_train, x_test = binary_digits[:1500], binary_digits[1500:]
    backend = gm.inference.ELBO(guide=gm.models.AmortizedNormal(hidden=(64,)))
    seeds = (0, 1, 2)
    elbo = {
        engine: np.array(
            [
                gm.fit(make(s), x_train, backend, steps=1500, batch_size=128, seed=s, progress=False)
                .log_prob(x_test, num_particles=64)
                .elbo.mean()
                for s in seeds
            ]
        )
        for engine, make in (("pyro", pyro_vae), ("numpyro", numpyro_vae))
    }
    p, n = elbo["pyro"], elbo["numpyro"]
    spread = np.sqrt((p.var(ddof=1) + n.var(ddof=1)) / len(seeds))  # sd of the difference of the two means
    assert abs(p.mean() - n.mean()) <= Z * spread + 0.5, elbo  # + 0.5 nat: an sd from 3 seeds is rough
    assert p.mean() > -25, elbo  # trained (the untrained model is far below)


# ---------------------------------------------------------------------- guides
def test_user_guide_is_accepted():
    import pyro
    import pyro.distributions as dist
    import torch

    x = ppca_data(200, seed=0)
    enc = torch.nn.Linear(3, 2)

    def guide(x=None, n=None):
        h = pyro.module("enc", enc)(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(h[:, :1], torch.nn.functional.softplus(h[:, 1:])).to_event(1))

    fit = gm.fit(pyro_ppca(), x, gm.inference.ELBO(guide=guide), steps=300, batch_size=200, optim=0.02, progress=False)
    assert any(k.startswith("enc$$$") for k in fit.program.params())
    assert fit.history["loss"][-20:].mean() < fit.history["loss"][:20].mean()


def global_mean_model(engine: str):
    """``m ~ N(0, 10^2)`` shared by all examples, ``x_i ~ N(m, 1)``: the posterior of ``m`` is Normal."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist

        def model(x=None, n=None):
            m = pyro.sample("m", dist.Normal(0.0, 10.0))
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", dist.Normal(m.unsqueeze(-1), 1.0).to_event(1), obs=x)

        return model
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        m = numpyro.sample("m", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(m[..., None], 1.0).to_event(1), obs=x)

    return model


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_autoguide_over_per_example_latents_is_refused_before_training(engine):
    if engine == "pyro":
        from pyro.infer.autoguide import AutoNormal
    else:
        from numpyro.infer.autoguide import AutoNormal
    model = PPCA[engine]()
    with pytest.raises(gm.BackendError, match="amortised guide"):
        gm.fit(model, ppca_data(50, 0), gm.inference.ELBO(guide=AutoNormal(model)), steps=3, progress=False)


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_autoguide_over_a_global_latent_is_the_exact_posterior(engine):
    """An autoguide as is: AutoNormal on a global mean, full batch; the posterior is N(sum x / (n + 0.01), 1 / (n + 0.01))."""
    if engine == "pyro":
        from pyro.infer.autoguide import AutoNormal
    else:
        from numpyro.infer.autoguide import AutoNormal
    x = (np.random.default_rng(0).normal(size=(50, 1)) + 2.0).astype(np.float32)
    model = global_mean_model(engine)
    backend = gm.inference.ELBO(guide=AutoNormal(model), objective="meanfield", num_particles=32)
    fit = gm.fit(model, x, backend, steps=2000, batch_size=len(x), optim=0.01, progress=False)
    precision, draws = len(x) + 1 / 100, 20000
    z = np.asarray(fit.posterior(x, num_samples=draws, seed=0), dtype=float).reshape(-1)
    assert abs(z.mean() - x.sum() / precision) <= OPT_MEAN + Z * np.sqrt(1 / precision / draws)
    assert abs(z.var() * precision - 1) <= OPT_VAR + Z * np.sqrt(2 / draws)
    # a guide over a global site makes a Bayesian fit: log_prob is the guide's posterior predictive
    # (1/S) sum_s N(x; mu_s, 1) over Fit.GUIDE_DRAWS = 1000 draws, vs the exact N(x; m, 1 + 1/precision):
    # the guide's mean error (OPT_MEAN) moves it by |x - m| * OPT_MEAN <= 0.06 here; Monte Carlo sd ~0.02
    from scipy.stats import norm

    m, v = x.sum() / precision, 1 / precision
    want = norm.logpdf(x[:, 0].astype(float), m, np.sqrt(1 + v))
    np.testing.assert_allclose(np.asarray(fit.log_prob(x), dtype=float), want, atol=0.1)


# ---------------------------------------------------------------------- the torch compile
def test_torch_loss_is_compiled_and_matches_the_uncompiled_loss():
    import torch

    x = ppca_data(64, seed=0)
    fit = gm.fit(pyro_ppca(), x, gm.inference.ELBO(), steps=2, batch_size=64, progress=False)
    plan = fit.plan
    compiled = plan.cache["loss"]
    assert plan.cache["compiled"]
    from gmppl.inference.elbo import _pyro_loss

    eager = _pyro_loss(fit.backend, fit.program, plan, jit=False)
    xt = fit.program.as_array(x)
    with fit.program.scope():
        torch.manual_seed(1)
        a = eager(xt)
        torch.manual_seed(1)
        b = compiled(xt)
    assert torch.allclose(a, b, rtol=1e-5)


def test_a_conditional_loss_is_compiled_with_its_inputs():
    """A conditional program (``model(x, y)``, the label concatenated to ``z`` as in a CVAE, which does not
    broadcast over a particle plate) runs the compiled loss with its inputs by position: the compiled loss
    equals the uncompiled one on other rows, so the inputs are read per call, not baked into the trace."""
    import pyro
    import pyro.distributions as dist
    import torch

    torch.manual_seed(0)
    dec = torch.nn.Linear(3, 2)

    def cvae(x=None, y=None):
        d = pyro.module("dec", dec)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(d(torch.cat([z, y], -1)), 0.5).to_event(1), obs=x)

    rng = np.random.default_rng(0)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 64)]
    x = (y * 2 + rng.normal(size=(64, 2))).astype(np.float32)
    fit = gm.fit(cvae, {"x": x, "y": y}, gm.inference.ELBO(), steps=2, batch_size=32, progress=False)
    plan = fit.plan
    assert plan.cache["compiled"] and not plan.vectorized
    from gmppl.inference.elbo import _pyro_loss

    eager = _pyro_loss(fit.backend, fit.program, plan, jit=False)
    xt, rows = fit.program.as_array(x[::-1].copy()), fit.program.as_inputs({"y": y[::-1].copy()})
    with fit.program.scope():
        torch.manual_seed(1)
        a = eager(xt, rows)
        torch.manual_seed(1)
        b = plan.cache["loss"](xt, rows)
        torch.manual_seed(1)
        c = plan.cache["loss"](xt, {"y": 1 - rows["y"]})  # other labels give another loss
    assert torch.allclose(a, b, rtol=1e-5)
    assert not torch.allclose(b, c, rtol=1e-3)


def test_data_dependent_structure_runs_uncompiled(caplog):
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        w = pyro.param("w", torch.ones(3))
        n = x.shape[0] if x is not None else n
        shift = 0.0 if x is None or float(x[0, 0]) < 0 else 1.0  # structure that reads the data
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * w + shift, 1.0).to_event(1), obs=x)

    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    x[0, 0], x[-1, 0] = 1.0, -1.0  # the check batch (reversed) starts with a negative value
    with caplog.at_level(logging.WARNING, logger="gmppl"):
        fit = gm.fit(model, x, gm.inference.ELBO(), steps=3, batch_size=64, progress=False)
    assert "uncompiled" in caplog.text
    assert np.isfinite(fit.history["loss"]).all()


# ---------------------------------------------------------------------- outputs
@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_log_prob_posterior_arviz_and_save_load(engine, tmp_path, binary_digits):
    import warnings

    import arviz as az

    make = pyro_vae if engine == "pyro" else numpyro_vae
    x = binary_digits
    fit = gm.fit(make(), x[:300], gm.inference.ELBO(), steps=30, progress=False)

    lp = fit.log_prob(x[300:310], num_particles=50)
    assert np.asarray(lp).shape == (10,) and lp.stderr.shape == (10,) and lp.is_estimate
    assert np.all(np.isfinite(np.asarray(lp))) and np.all(lp.elbo <= np.asarray(lp) + 1e-4)
    again = fit.log_prob(x[300:310], num_particles=50)
    np.testing.assert_array_equal(np.asarray(lp), np.asarray(again))  # seeded: reproducible

    z = np.asarray(fit.posterior(x[300:310], num_samples=7, seed=0))
    assert z.shape == (7, 10, 4)

    tree = fit.to_arviz(x[300:310])
    assert tree["posterior"]["z"].shape[:3] == (1, 100, 10)  # to_arviz's default posterior_samples
    assert tree["log_likelihood"]["x"].shape == (1, 100, 10)
    np.testing.assert_allclose(
        tree["log_marginal_likelihood"]["x"].values[0, 0], np.asarray(fit.log_prob(x[300:310])), rtol=1e-6
    )
    ap = tree["approximate_posterior"]
    np.testing.assert_allclose(  # the joint log-weight is the sum of the per-example ones
        (ap["log_p"] - ap["log_q"]).values, ap["log_weight"].values.sum(-1), rtol=1e-9
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto k warnings (see ELBO.arviz_groups)
        loo = az.loo_approximate_posterior(tree, ap["log_p"], ap["log_q"], pointwise=True)
    assert np.isfinite(loo.elpd) and loo.elpd_i.shape == (10,) and loo.approx_posterior

    fit.save(tmp_path / "fit")
    back = gm.load(tmp_path / "fit", make())
    np.testing.assert_allclose(np.asarray(back.log_prob(x[300:310], num_particles=50)), np.asarray(lp), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(back.posterior(x[300:310], 7, seed=0)), z, rtol=1e-5)


def test_ensemble_log_prob_is_the_mixture():
    x = ppca_data(200, seed=0)
    fit = gm.fit(pyro_ppca(), x, gm.inference.ELBO(), steps=20, chains=2, batch_size=100, progress=False)
    per_chain = fit.log_prob_chains(x[:10], num_particles=50)
    assert per_chain.shape == (2, 10)
    np.testing.assert_allclose(
        np.asarray(fit.log_prob(x[:10], num_particles=50)), np.logaddexp(*per_chain) - np.log(2), rtol=1e-6
    )


# ---------------------------------------------------------------------- bad input, before training
def _no_latent(engine):
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            mu = pyro.param("mu", torch.zeros(3))
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        mu = numpyro.param("mu", jnp.zeros(3))
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    return model


def _wrong_guides(engine):
    """A guide with a misnamed site, and one with the wrong event shape."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def misnamed(x=None, n=None):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("w", dist.Normal(torch.zeros(1), 1.0).to_event(1))

        def misshapen(x=None, n=None):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

        return misnamed, misshapen
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def misnamed(x=None, n=None):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("w", dist.Normal(jnp.zeros(1), 1.0).to_event(1))

    def misshapen(x=None, n=None):
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))

    return misnamed, misshapen


class _NoTraining:
    def __call__(self, step, metrics):  # pragma: no cover - must never run
        raise AssertionError("a training step ran before the error")


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_bad_input_is_refused_before_training(engine):
    x = ppca_data(50, seed=0)
    stop = (_NoTraining(),)
    with pytest.raises(gm.NotSupported, match="latent.*Likelihood"):
        gm.fit(_no_latent(engine), x, gm.inference.ELBO(), steps=5, callbacks=stop, progress=False)
    misnamed, misshapen = _wrong_guides(engine)
    with pytest.raises(gm.ModelError, match=r"does not sample the model's latent.*\['z'\]"):
        gm.fit(PPCA[engine](), x, gm.inference.ELBO(guide=misnamed), steps=5, callbacks=stop, progress=False)
    with pytest.raises(gm.ModelError, match="shape"):
        gm.fit(PPCA[engine](), x, gm.inference.ELBO(guide=misshapen), steps=5, callbacks=stop, progress=False)
    with pytest.raises(gm.DataError, match="shape"):
        gm.fit(
            PPCA[engine](), np.ones((50, 4), np.float32), gm.inference.ELBO(), steps=5, callbacks=stop, progress=False
        )


def test_an_objective_object_is_used_as_is_on_its_own_engine():
    import numpyro.infer
    import pyro.infer

    x = ppca_data(64, seed=0)
    backend = gm.inference.ELBO(
        objective=pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    )
    fit = gm.fit(pyro_ppca(), x, backend, steps=5, progress=False)
    assert np.isfinite(fit.history["loss"]).all()
    with pytest.raises(gm.BackendError, match="differentiable_loss"):  # Pyro's has loss_and_grads only
        gm.fit(pyro_ppca(), x, gm.inference.ELBO(objective=pyro.infer.TraceGraph_ELBO()), steps=5, progress=False)
    with pytest.raises(gm.BackendError, match="NumPyro"):
        gm.fit(numpyro_ppca(), x, gm.inference.ELBO(objective=pyro.infer.Trace_ELBO()), steps=5, progress=False)
    fit = gm.fit(
        numpyro_ppca(), x, gm.inference.ELBO(objective=numpyro.infer.TraceGraph_ELBO()), steps=5, progress=False
    )
    assert np.isfinite(fit.history["loss"]).all()


def test_bad_settings_are_refused():
    with pytest.raises(gm.UnknownName, match="iwae"):
        gm.inference.ELBO(objective="kl")
    with pytest.raises(gm.BackendError):
        gm.inference.ELBO(num_particles=0)
    with pytest.raises(gm.BackendError, match="trace"):
        gm.inference.ELBO(objective="renyi", alpha=1.0)
    with pytest.raises(gm.BackendError):
        gm.inference.ELBO(guide="amortized")
