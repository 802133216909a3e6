"""Conditional models: inputs minibatched with their rows and passed by keyword, on both engines, against
closed forms (least squares, Bayesian linear regression); sampling, log_prob, ArviZ and save/load given inputs."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gmppl as gm

ENGINES = ["pyro", "numpyro"]
A, B, S = 2.0, -1.0, 0.5  # x | y ~ N(A y + B, S^2)


@pytest.fixture(scope="module")
def regression() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 1)).astype(np.float32)
    x = (A * y + B + S * rng.normal(size=(400, 1))).astype(np.float32)
    return {"x": x, "y": y}


def linear(engine: str):
    """``x | y ~ N(a y + b, s^2)`` with point parameters: its maximum likelihood is least squares."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch
        from torch.distributions import constraints

        def model(x=None, y=None):
            a = pyro.param("a", torch.zeros(1))
            b = pyro.param("b", torch.zeros(1))
            s = pyro.param("s", torch.ones(1), constraint=constraints.positive)
            with pyro.plate("data", y.shape[0]):
                pyro.sample("x", dist.Normal(a * y + b, s).to_event(1), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, y=None):
        a = numpyro.param("a", jnp.zeros(1))
        b = numpyro.param("b", jnp.zeros(1))
        s = numpyro.param("s", jnp.ones(1), constraint=dist.constraints.positive)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("x", dist.Normal(a * y + b, s).to_event(1), obs=x)

    return model


def least_squares(data: dict[str, np.ndarray]) -> tuple[float, float, float]:
    y, x = data["y"][:, 0].astype(float), data["x"][:, 0].astype(float)
    design = np.stack([y, np.ones_like(y)], 1)
    (a, b), *_ = np.linalg.lstsq(design, x, rcond=None)
    return a, b, float(np.sqrt(np.mean((x - a * y - b) ** 2)))


@pytest.mark.parametrize("engine", ENGINES)
def test_inputs_are_minibatched_with_their_rows(engine: str, regression: dict) -> None:
    """Shuffled minibatches of 64 rows: the fit reaches the least-squares answer only if each ``y`` stays with its
    ``x`` (a label shuffled apart from its row would pull ``a`` to 0). The tolerance is Adam's jitter at a
    step size of 0.01 under minibatch noise (about the step size), with margin."""
    fit = gm.fit(
        linear(engine),
        regression,
        gm.inference.Likelihood(),
        steps=2000,
        batch_size=64,
        optim=gm.optim.Adam(0.01),
        progress=False,
    )
    a, b, s = least_squares(regression)
    p = fit.params
    np.testing.assert_allclose([p["a"][0], p["b"][0], p["s"][0]], [a, b, s], atol=0.05)


@pytest.mark.parametrize("engine", ENGINES)
def test_sample_log_prob_and_arviz_given_inputs(engine: str, regression: dict, tmp_path) -> None:
    fit = gm.fit(
        linear(engine),
        regression,
        gm.inference.Likelihood(),
        steps=300,
        batch_size=400,
        optim=gm.optim.Adam(0.1),
        progress=False,
    )
    p = fit.params
    y_new = np.array([[-1.0], [0.0], [3.0]], np.float32)
    # one example per input row, given that row: the mean of many draws at each row is a y + b
    draws = np.stack([np.asarray(fit.sample(inputs={"y": y_new}, seed=s)) for s in range(400)])
    assert draws.shape == (400, 3, 1)
    se = p["s"][0] / np.sqrt(400)
    np.testing.assert_allclose(draws.mean(0)[:, 0], p["a"][0] * y_new[:, 0] + p["b"][0], atol=5 * se)
    # log p(x | y) is the Normal density at each row
    from scipy.stats import norm

    x_new = np.array([[0.0], [1.0], [2.0]], np.float32)
    lp = np.asarray(fit.log_prob({"x": x_new, "y": y_new}))
    want = norm(p["a"][0] * y_new[:, 0] + p["b"][0], p["s"][0]).logpdf(x_new[:, 0])
    np.testing.assert_allclose(lp, want, rtol=1e-5)
    tree = fit.to_arviz({"x": x_new, "y": y_new})
    assert "y" in tree["constant_data"]
    pp = tree["posterior_predictive"]["x"]
    assert pp.dims[:3] == ("chain", "draw", "obs") and pp.shape[2] == 3
    fit.save(tmp_path / "fit")
    again = gm.load(tmp_path / "fit", linear(engine))
    np.testing.assert_allclose(np.asarray(again.log_prob({"x": x_new, "y": y_new})), lp, rtol=1e-6)
    assert again.input_names == ["y"]


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_inputs_are_refused(engine: str, regression: dict) -> None:
    with pytest.raises(gm.DataError, match="one row per example"):
        gm.fit(linear(engine), {"x": regression["x"], "y": regression["y"][:10]}, steps=1, progress=False)
    with pytest.raises(gm.ModelError, match="does not take"):
        gm.fit(linear(engine), {**regression, "w": regression["y"]}, steps=1, progress=False)
    with pytest.raises(gm.ModelError, match="also takes 'y'"):
        gm.fit(linear(engine), regression["x"], steps=1, progress=False)
    with pytest.raises(gm.DataError, match="observed data 'x'"):
        gm.fit(linear(engine), {"obs": regression["x"], "y": regression["y"]}, steps=1, progress=False)
    fit = gm.fit(linear(engine), regression, steps=2, progress=False)
    with pytest.raises(gm.DataError, match="conditional on"):
        fit.sample(5)
    with pytest.raises(gm.DataError, match="takes the inputs"):
        fit.sample(inputs={"z": regression["y"][:3]})
    with pytest.raises(gm.DataError, match="takes the inputs"):
        fit.log_prob(regression["x"][:3])


def test_partial_binds_constants_and_n_is_passed_only_when_taken(regression: dict) -> None:
    """``functools.partial`` fixes a constant; a program without ``n`` is never given one."""
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, y=None, scale=1.0):
        b = pyro.param("b", torch.zeros(1))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("x", dist.Normal(b + 0 * y, scale).to_event(1), obs=x)

    fit = gm.fit(
        functools.partial(model, scale=S),
        regression,
        steps=200,
        batch_size=400,
        optim=gm.optim.Adam(0.1),
        progress=False,
    )
    np.testing.assert_allclose(fit.params["b"], regression["x"].mean(), atol=0.02)


def bayes_regression(engine: str, noise: float):
    """``w ~ N(0, I)``, ``y | X, w ~ N(X w, noise^2)``: the NumPyro ``bnn.py`` signature ``model(X, Y)``."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(X=None, Y=None):
            w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with pyro.plate("data", X.shape[0]):
                pyro.sample("Y", dist.Normal((X @ w)[:, None], noise).to_event(1), obs=Y)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(X=None, Y=None):
        w = numpyro.sample("w", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("Y", dist.Normal((X @ w)[:, None], noise).to_event(1), obs=Y)

    return model


@pytest.mark.parametrize("engine", ENGINES)
def test_nuts_bayesian_linear_regression_against_the_closed_form(engine: str) -> None:
    """Posterior ``w | X, Y ~ N(m, V)``, ``V = (I + X'X / s^2)^-1``, ``m = V X'Y / s^2``; the predictive at new
    inputs ``N(X* m, X* V X*' + s^2)``. Posterior means within 5 Monte Carlo standard errors (posterior sd over
    sqrt of a conservative effective sample size, a quarter of the draws); the predictive's mean and sd too."""
    rng = np.random.default_rng(1)
    noise = 0.5
    X = rng.normal(size=(30, 2)).astype(np.float32)
    Y = (X @ np.array([1.0, -0.5]) + noise * rng.normal(size=30)).astype(np.float32)[:, None]
    V = np.linalg.inv(np.eye(2) + X.T.astype(float) @ X / noise**2)
    m = V @ X.T.astype(float) @ Y[:, 0] / noise**2
    fit = gm.fit(
        bayes_regression(engine, noise),
        {"Y": Y, "X": X},
        gm.inference.NUTS(num_warmup=200),
        steps=400,
        chains=2 if engine == "numpyro" else 1,  # Pyro's NUTS runs in Python: one chain keeps the test short
        observed="Y",
        progress=False,
    )
    w = np.concatenate([d.values["w"] for d in fit.draws])
    ess = len(w) / 4
    assert np.all(np.abs(w.mean(0) - m) <= 5 * np.sqrt(np.diag(V) / ess)), (w.mean(0), m)
    np.testing.assert_allclose(w.std(0), np.sqrt(np.diag(V)), rtol=0.15)
    X_new = np.array([[0.0, 0.0], [2.0, 1.0], [-1.0, 3.0]], np.float32)
    tree = fit.to_arviz({"Y": np.zeros((3, 1), np.float32), "X": X_new})
    pp = tree["posterior_predictive"]["Y"].values  # (chain, draw, obs, 1)
    assert pp.shape == (fit.chains, 400, 3, 1)
    mean = X_new @ m
    sd = np.sqrt(np.einsum("ij,jk,ik->i", X_new, V, X_new) + noise**2)
    draws = pp.reshape(-1, 3)
    assert np.all(np.abs(draws.mean(0) - mean) <= 5 * sd / np.sqrt(len(draws) / 4)), (draws.mean(0), mean)
    np.testing.assert_allclose(draws.std(0), sd, rtol=0.1)
    assert np.asarray(fit.sample(inputs={"X": X_new})).shape == (3, 1)
    import arviz as az

    loo = az.loo(fit.to_arviz())
    assert np.isfinite(loo.elpd)


@pytest.mark.parametrize("engine", ENGINES)
def test_conditional_vae_guide_sees_the_inputs(engine: str) -> None:
    """The default guide of a conditional model is ``q(z | x, y)``: its encoder takes ``x`` and ``y`` side by
    side. ``x = y + w z + noise`` (1-D): the ELBO fit's decoder slope on ``y`` reaches least squares (the marginal
    ``x | y ~ N(b y, w^2 + s^2)`` is exact for a linear encoder) within optimisation and Monte Carlo error."""
    rng = np.random.default_rng(2)
    y = rng.normal(size=(500, 1)).astype(np.float32)
    x = (1.5 * y + 0.8 * rng.normal(size=(500, 1)) + 0.3 * rng.normal(size=(500, 1))).astype(np.float32)
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, y=None):
            b = pyro.param("b", torch.zeros(1))
            w = pyro.param("w", torch.ones(1))
            with pyro.plate("data", y.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(b * y + w * z, 0.3).to_event(1), obs=x)
    else:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        def model(x=None, y=None):
            b = numpyro.param("b", jnp.zeros(1))
            w = numpyro.param("w", jnp.ones(1))
            with numpyro.plate("data", y.shape[0]):
                z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
                numpyro.sample("x", dist.Normal(b * y + w * z, 0.3).to_event(1), obs=x)

    backend = gm.inference.ELBO(guide=gm.models.AmortizedNormal(hidden=()))
    fit = gm.fit(
        model, {"x": x, "y": y}, backend, steps=3000, batch_size=500, optim=gm.optim.Adam(0.02), progress=False
    )
    slope = float(np.linalg.lstsq(y.astype(float), x[:, 0].astype(float), rcond=None)[0][0])
    assert abs(fit.params["b"][0] - slope) < 0.05, (fit.params["b"], slope)
    encoder = [v for k, v in fit.params.items() if k.startswith("guide")]
    assert any(v.ndim == 2 and 2 in v.shape for v in encoder)  # the linear encoder reads (x, y)
    z = np.asarray(fit.posterior({"x": x[:4], "y": y[:4]}, num_samples=3))
    assert z.shape == (3, 4, 1)
    lp = fit.log_prob({"x": x[:4], "y": y[:4]}, num_particles=200)
    assert np.isfinite(np.asarray(lp)).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_conditional_gan_critic_sees_the_inputs(engine: str) -> None:
    """A conditional location model ``x = theta y + z`` fit adversarially (JS) to ``x | y ~ N(2 y, 1)``: the
    critic sees ``(x, y)``, so only ``theta = 2`` makes the pairs indistinguishable. Tolerance 0.25: the
    stochastic-optimisation spread of this short fit (measured 0.05-0.1 over seeds), with margin."""
    rng = np.random.default_rng(3)
    y = rng.choice([-1.0, 1.0], size=(2000, 1)).astype(np.float32)
    x = (2.0 * y + rng.normal(size=(2000, 1))).astype(np.float32)
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, y=None):
            theta = pyro.param("theta", torch.zeros(1))
            with pyro.plate("data", y.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
                pyro.deterministic("x", theta * y + z, event_dim=1)
    else:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        def model(x=None, y=None):
            theta = numpyro.param("theta", jnp.zeros(1))
            with numpyro.plate("data", y.shape[0]):
                z = numpyro.sample("z", dist.Normal(jnp.zeros(1), 1.0).to_event(1))
                numpyro.deterministic("x", theta * y + z)

    backend = gm.inference.Adversarial("js", optim=gm.optim.Adam(2e-3, betas=(0.5, 0.999)))
    fit = gm.fit(model, {"x": x, "y": y}, backend, steps=1500, batch_size=256, progress=False)
    assert abs(fit.params["theta"][0] - 2.0) < 0.25, fit.params["theta"]
    s = np.asarray(fit.sample(inputs={"y": np.array([[-1.0], [1.0]] * 200, np.float32)}))
    assert s.shape == (400, 1) and s[1::2].mean() - s[::2].mean() > 3.0


@pytest.mark.parametrize("engine", ENGINES)
def test_bayesian_svi_linear_regression_against_the_closed_form(engine: str) -> None:
    """Bayesian SVI with a full-rank Gaussian guide over ``w`` (the exact posterior family): the guide's draws
    match ``N(m, V)``. Tolerance: Adam at step size 0.02 keeps jittering around the optimum by about its step
    (0.02 per coordinate), so means within half a posterior sd (~0.05) plus 5 Monte Carlo standard errors of
    the 1000 draws; sds within 20%."""
    rng = np.random.default_rng(1)
    noise = 0.5
    X = rng.normal(size=(30, 2)).astype(np.float32)
    Y = (X @ np.array([1.0, -0.5]) + noise * rng.normal(size=30)).astype(np.float32)[:, None]
    V = np.linalg.inv(np.eye(2) + X.T.astype(float) @ X / noise**2)
    m = V @ X.T.astype(float) @ Y[:, 0] / noise**2
    model = bayes_regression(engine, noise)
    if engine == "pyro":
        from pyro.infer.autoguide import AutoMultivariateNormal
    else:
        from numpyro.infer.autoguide import AutoMultivariateNormal
    backend = gm.inference.ELBO(guide=AutoMultivariateNormal(model), num_particles=8)
    fit = gm.fit(
        model,
        {"Y": Y, "X": X},
        backend,
        steps=3000,
        batch_size=30,
        optim=gm.optim.Adam(0.02),
        observed="Y",
        progress=False,
    )
    assert fit.is_bayesian
    w = np.concatenate([d.values["w"] for d in fit.draws])
    sd = np.sqrt(np.diag(V))
    assert np.all(np.abs(w.mean(0) - m) <= 0.5 * sd + 5 * sd / np.sqrt(len(w))), (w.mean(0), m)
    np.testing.assert_allclose(w.std(0), sd, rtol=0.2)
    assert np.asarray(fit.sample(inputs={"X": X[:3]})).shape == (3, 1)
