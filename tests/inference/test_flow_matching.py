"""``gm.inference.FlowMatching`` against exact answers, on both engines.

* The loss at the exact marginal velocity of ``N(m, S)`` (see tests/models/test_continuous_flow.py) is the
  conditional variance ``L* = int_0^1 sum_i lambda_i (a'_t b_t - a_t b'_t)^2 / (a_t^2 + b_t^2 lambda_i) dt``
  (``lambda_i`` the eigenvalues of ``S``: ``Cov(u_t | x_t)`` per eigen-direction), by quadrature; the mean of
  ``K`` minibatch losses, each on fresh data, is within 4 standard errors.
* Minibatch OT: the pairing's cost equals the assignment problem's minimum (scipy), also through
  ``jax.pure_callback`` inside ``jit`` and ``vmap``.
* Training on a Gaussian: samples' mean and covariance within 4 standard errors plus ``MODEL_BIAS``; the
  held-out ``KL(p || q) = E_p[log p - log q]`` estimated on ``N_TEST`` points is at least ``-4`` standard
  errors (a KL is not negative) and at most ``NATS`` (a fitted model's gap; observed ~0.02 after 800 steps).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

import gmppl as gm
from gmppl.engines import make_program
from gmppl.inference.flow_matching import jax_ot_pairing, ot_pairing, path_coefficients

MU = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.8]])
MODEL_BIAS = 0.1
NATS = 0.1
N_TEST = 300


def gauss_logpdf(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    d = x - mu
    return -0.5 * (d * np.linalg.solve(cov, d.T).T).sum(1) - 0.5 * np.linalg.slogdet(2 * math.pi * cov)[1]


def expected_loss(path: str, sigma_min: float) -> float:
    def integrand(t: float) -> float:
        a, da, b, db = (float(v) for v in path_coefficients(path, sigma_min, np.asarray(t)))
        lam = np.linalg.eigvalsh(COV)
        return float(np.sum(lam * (da * b - a * db) ** 2 / (a**2 + b**2 * lam)))

    return scipy.integrate.quad(integrand, 0.0, 1.0, limit=200)[0]


# ------------------------------------------------------------------ exact velocity programs
class ExactVelocity(torch.nn.Module):
    """The marginal velocity toward ``N(c, COV)`` for context rows ``c`` (or ``N(MU, COV)`` without)."""

    event_shape = (2,)

    def __init__(self, path: str, sigma_min: float):
        super().__init__()
        self.path, self.sigma_min = path, sigma_min

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        a, da, b, db = (v[:, None, None] for v in path_coefficients(self.path, self.sigma_min, t.double()))
        eye, s = torch.eye(2, dtype=torch.float64), torch.tensor(COV)
        m = torch.tensor(MU).expand(x.shape[0], 2) if c is None else c.double()
        k = (a * da * eye + b * db * s) @ torch.linalg.inv(a**2 * eye + b**2 * s)
        return (db[:, 0] * m + (k @ (x.double() - b[:, 0] * m)[..., None])[..., 0]).to(x.dtype)


def exact_program(engine: str, path: str, sigma_min: float, conditional: bool) -> object:
    """``x ~ ContinuousFlow(exact velocity)``; conditional: ``model(x=None, y=None)`` with context ``y``
    and target ``N(y, COV)`` per row."""
    if engine == "pyro":
        import pyro

        net = ExactVelocity(path, sigma_min)

        def flow(x, n, c):  # noqa: ANN001, ANN202
            with pyro.plate("data", n):
                pyro.sample("x", gm.models.ContinuousFlow(net, c, solver="euler", steps=2), obs=x)

    else:
        import jax.numpy as jnp
        import numpyro

        def v(x, t, c=None):  # noqa: ANN001, ANN202
            a, da, b, db = (u[:, None, None] for u in path_coefficients(path, sigma_min, t))
            eye, s = jnp.eye(2, dtype=x.dtype), jnp.asarray(COV, x.dtype)
            m = jnp.broadcast_to(jnp.asarray(MU, x.dtype), x.shape) if c is None else c
            k = (a * da * eye + b * db * s) @ jnp.linalg.inv(a**2 * eye + b**2 * s)
            return db[:, 0] * m + (k @ (x - b[:, 0] * m)[..., None])[..., 0]

        def flow(x, n, c):  # noqa: ANN001, ANN202
            with numpyro.plate("data", n):
                numpyro.sample("x", gm.models.ContinuousFlow(v, c, event_shape=(2,), solver="euler", steps=2), obs=x)

    if conditional:
        return lambda x=None, y=None: flow(x, y.shape[0], y)
    return lambda x=None, n=None: flow(x, x.shape[0] if x is not None else n, None)


def exact_setup(engine: str, backend: gm.inference.FlowMatching, conditional: bool, x: np.ndarray, y: np.ndarray):  # noqa: ANN201
    """``(program, plan)`` of the exact program, checked and prepared as ``gm.fit`` does."""
    from gmppl.engines import check_signature

    model = exact_program(engine, backend.path, backend.sigma_min, conditional)
    inputs = {"y": y[:8]} if conditional else None
    call = check_signature(model, "x", ("y",) if conditional else ())
    program = make_program(engine, model, observed="x", latent="z", device="cpu", call=call)
    info = program.inspect(x[:8], inputs)
    backend.check(info)
    return program, backend.prepare(program, info, x[:8], seed=0, inputs=inputs)


@pytest.mark.parametrize(
    "engine,path,sigma_min,conditional",
    [
        ("pyro", "ot", 0.0, False),
        ("pyro", "vp", 0.05, True),
        ("numpyro", "ot", 0.1, True),
        ("numpyro", "vp", 0.0, False),
    ],
)
def test_loss_at_the_exact_field_is_the_conditional_variance(
    engine: str, path: str, sigma_min: float, conditional: bool
) -> None:
    """Conditional: ``x = y + N(0, COV)`` with ``y`` the input rows; given ``y`` the loss is the same ``L*``."""
    k, b = 100, 256
    rng = np.random.default_rng(0)
    ys = (2 * rng.normal(size=(k, b, 2)) if conditional else np.broadcast_to(MU, (k, b, 2))).astype(np.float32)
    data = (ys + rng.multivariate_normal(np.zeros(2), COV, size=(k, b))).astype(np.float32)  # fresh every batch
    backend = gm.inference.FlowMatching(path=path, sigma_min=sigma_min)
    program, plan = exact_setup(engine, backend, conditional, data[0], ys[0])
    if engine == "pyro":
        torch.manual_seed(0)
        rows = [{"y": torch.tensor(y)} if conditional else None for y in ys]
        losses = np.array(
            [float(backend.torch_loss(program, plan, torch.tensor(x), r)[0]) for x, r in zip(data, rows, strict=True)]
        )
    else:
        import jax
        import jax.numpy as jnp

        loss = jax.jit(backend.jax_loss(program, plan))
        keys = jax.random.split(jax.random.PRNGKey(0), k)
        losses = np.array(
            [
                float(loss(program.params, jnp.asarray(x), kk, {"y": jnp.asarray(y)} if conditional else None)[0])
                for x, y, kk in zip(data, ys, keys, strict=True)
            ]
        )
    truth = expected_loss(path, sigma_min)
    se = losses.std(ddof=1) / np.sqrt(k)
    assert abs(losses.mean() - truth) <= 4 * se, (losses.mean(), truth, se)


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_log_prob_given_inputs_is_each_rows_density(engine: str) -> None:
    """The exact conditional flow toward ``N(y, COV)``: ``log_prob(x | y)`` is each row's Gaussian density
    (float32, solver rtol = atol = 1e-5: ``1e-3`` nats)."""
    rng = np.random.default_rng(3)
    y = (2 * rng.normal(size=(12, 2))).astype(np.float32)
    x = (y + rng.multivariate_normal(np.zeros(2), COV, size=12)).astype(np.float32)
    backend = gm.inference.FlowMatching()
    program, plan = exact_setup(engine, backend, True, x, y)
    lp = backend.log_prob(program, plan, program.as_array(x), inputs=program.as_inputs({"y": y}))
    truth = np.array([gauss_logpdf(x[i : i + 1], y[i], COV)[0] for i in range(12)])
    np.testing.assert_allclose(np.asarray(lp), truth, atol=1e-3)


# ------------------------------------------------------------------ minibatch OT
def test_minibatch_ot_pairing_is_the_optimal_assignment_on_both_engines() -> None:
    import jax
    import jax.numpy as jnp
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(1)
    x0, x1 = rng.normal(size=(3, 64, 2)), rng.normal(size=(3, 64, 2)) + 2.0
    for a, b in zip(x0, x1, strict=True):
        perm = ot_pairing(a, b)
        assert sorted(perm) == list(range(64))
        cost = ((a[:, None] - b[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        np.testing.assert_allclose(cost[perm, np.arange(64)].sum(), cost[rows, cols].sum(), rtol=1e-12)
    expected = np.stack([ot_pairing(a, b) for a, b in zip(x0, x1, strict=True)])
    jitted = jax.jit(jax.vmap(jax_ot_pairing))(jnp.asarray(x0, jnp.float32), jnp.asarray(x1, jnp.float32))
    np.testing.assert_array_equal(np.asarray(jitted), expected)


# ------------------------------------------------------------------ training on a Gaussian
def mlp_program(engine: str, width: int = 64) -> object:
    if engine == "pyro":
        import pyro

        v = gm.models.ScoreMLP(2, width=width, depth=2)

        def model(x=None, n=None):  # noqa: ANN001, ANN202
            net = pyro.module("velocity", v)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.ContinuousFlow(net, rtol=1e-4, atol=1e-4), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    v = gm.models.ScoreMLP(2, width=width, depth=2, key=jax.random.PRNGKey(0))

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        net = eqx_module("velocity", v)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.ContinuousFlow(net, rtol=1e-4, atol=1e-4), obs=x)

    return model


def _check_fit(fit: gm.Fit) -> None:
    x = np.asarray(fit.sample(3000, seed=1), dtype=np.float64)
    n = len(x)
    assert (np.abs(x.mean(0) - MU) <= 4 * np.sqrt(np.diag(COV) / n) + MODEL_BIAS).all(), x.mean(0)
    se_cov = np.sqrt((np.outer(np.diag(COV), np.diag(COV)) + COV**2) / n)
    assert (np.abs(np.cov(x.T) - COV) <= 4 * se_cov + MODEL_BIAS).all(), np.cov(x.T)
    x_test = np.random.default_rng(9).multivariate_normal(MU, COV, size=N_TEST).astype(np.float32)
    gap = gauss_logpdf(x_test, MU, COV) - np.asarray(fit.log_prob(x_test), dtype=np.float64)
    kl, se = gap.mean(), gap.std(ddof=1) / np.sqrt(N_TEST)
    assert -4 * se <= kl <= NATS, (kl, se)


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_a_short_fit_recovers_a_gaussian(engine: str) -> None:
    x = np.random.default_rng(0).multivariate_normal(MU, COV, size=4000).astype(np.float32)
    fit = gm.fit(
        mlp_program(engine), x, gm.inference.FlowMatching(), steps=800, batch_size=256,
        optim=gm.optim.Adam(lr=2e-3), progress=False,
    )  # fmt: skip
    assert np.isfinite(fit.history["loss"]).all()
    _check_fit(fit)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
@pytest.mark.parametrize("path", ["ot", "vp"])
def test_minibatch_ot_fit_recovers_a_gaussian(engine: str, path: str) -> None:
    x = np.random.default_rng(0).multivariate_normal(MU, COV, size=4000).astype(np.float32)
    backend = gm.inference.FlowMatching(path=path, coupling="minibatch_ot")
    fit = gm.fit(
        mlp_program(engine), x, backend, steps=2000, batch_size=256, optim=gm.optim.Adam(lr=2e-3), progress=False
    )
    _check_fit(fit)


# ------------------------------------------------------------------ the rest of a backend
def tiny_program(engine: str) -> object:
    """A small velocity MLP; Euler sampling (cheap to compile), the likelihood at tight tolerances."""
    kw = {"solver": "euler", "steps": 8, "rtol": 1e-6, "atol": 1e-6}
    if engine == "pyro":
        import pyro

        v = gm.models.ScoreMLP(2, width=16, depth=2)

        def model(x=None, n=None):  # noqa: ANN001, ANN202
            net = pyro.module("velocity", v)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.ContinuousFlow(net, **kw), obs=x)

        return model
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    v = gm.models.ScoreMLP(2, width=16, depth=2, key=jax.random.PRNGKey(0))

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        net = eqx_module("velocity", v)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.ContinuousFlow(net, **kw), obs=x)

    return model


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_chains_minibatch_ot_validation_arviz_posterior_and_save(engine: str, tmp_path: object) -> None:
    from gmppl.models.continuous_flow import find_flow

    x = gm.datasets.moons(300)
    xs = x[:16]
    backend = gm.inference.FlowMatching(path="vp", sigma_min=0.01, coupling="minibatch_ot")
    model = tiny_program(engine)
    fit = gm.fit(model, x[:256], backend, steps=6, batch_size=64, chains=2, validation=x[256:], progress=False)
    assert fit.history["loss"].shape == (2, 6) and fit.history["val_loss"].shape[0] == 2
    lp = np.asarray(fit.log_prob(xs))
    assert lp.shape == (16,) and np.isfinite(lp).all()
    z = np.asarray(fit.posterior(xs, num_samples=3))
    assert z.shape == (3, 16, 2) and np.array_equal(z[0], z[2])
    tree = fit.to_arviz(xs, num_samples=8, posterior_samples=3)
    assert {"posterior_predictive", "log_likelihood", "posterior", "sample_stats"} <= set(tree.children)
    assert tree.log_likelihood["x"].shape == (2, 1, 16) and tree.posterior["z"].shape == (2, 3, 16, 2)
    if engine == "pyro":  # z is the flow's inverse: pushing it forward gives x back (JAX: the model tests)
        p = fit.program
        fit.write_back()  # the fitted weights into the caller's module, which the flow below uses
        flow = find_flow(p.trace(x=p.as_array(xs)).nodes["x"]["fn"])
        back = flow.transform(torch.as_tensor(z[0]), solver="dopri5")[0].detach().numpy()
        np.testing.assert_allclose(back, xs, atol=1e-3)
        lp4, se = backend.log_prob(p, fit.plan, p.as_array(xs[:4]), trace="hutchinson", probes=4, return_stderr=True)
        # in 2-D a Rademacher probe's estimate takes two values (e1 e2 = +-1), so four probes agree, and an
        # example's standard error is 0, with probability 1/8
        assert se.shape == (4,) and (se >= 0).all() and (se > 0).any() and np.isfinite(lp4.numpy()).all()
    else:  # torch: test_save_and_load_give_the_same_fit; here the weights, which fix every evaluation
        fit.save(tmp_path)
        again = gm.load(tmp_path, model)
        assert again.backend == backend and again.chains == 2
        for name, value in fit.params.items():
            np.testing.assert_array_equal(again.params[name], value)


@pytest.mark.parametrize("chains", [1, 2])  # two chains share one module: each saves its own values
def test_save_and_load_give_the_same_fit(chains: int, tmp_path: object) -> None:
    x = gm.datasets.moons(200)
    model = tiny_program("pyro")
    fit = gm.fit(
        model, x, gm.inference.FlowMatching(sigma_min=0.01), steps=4, batch_size=64, chains=chains, progress=False
    )
    lp = fit.log_prob_chains(x[:16])
    fit.save(tmp_path)
    again = gm.load(tmp_path, model)
    assert again.backend == fit.backend
    np.testing.assert_allclose(again.log_prob_chains(x[:16]), lp, atol=1e-5)


@pytest.mark.parametrize("engine", ["pyro", pytest.param("numpyro", marks=pytest.mark.slow)])  # JAX: 3 compiles
def test_a_resumed_minibatch_ot_fit_is_the_uninterrupted_one(engine: str, tmp_path: object) -> None:
    """The OT pairing uses only the step's own noise and data, so a resumed fit is bitwise the whole one."""
    x = gm.datasets.moons(256)
    backend = gm.inference.FlowMatching(coupling="minibatch_ot")
    kw = {"steps": 8, "batch_size": 64, "seed": 0, "progress": False}
    model = tiny_program(engine)  # one set of initial weights (a fit leaves the caller's modules as they were)
    whole = gm.fit(model, x, backend, **kw)
    gm.fit(model, x, backend, **{**kw, "steps": 4}, checkpoint=tmp_path, checkpoint_every=2)
    resumed = gm.fit(model, x, backend, **kw, checkpoint=tmp_path, checkpoint_every=2, resume=True)
    for name, value in whole.params.items():
        np.testing.assert_array_equal(resumed.params[name], value)


def test_minibatch_ot_on_two_devices_gives_the_one_device_fit() -> None:
    """The OT pairing (a host callback) sees the global batch whatever the mesh: 10 steps on 2 forced host
    devices equal 1 device's up to float32 reassociation (relative 1e-3, as tests/test_devices.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parents[1]), os.environ.get("PYTHONPATH", "")])}
    job = here / "flow_matching_devices_job.py"
    run = subprocess.run([sys.executable, str(job)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["gap"] < 1e-3, out


def conditional_program(engine: str) -> object:
    """``x | y ~ ContinuousFlow(v(x, t, y))``, ``v`` a small MLP of ``[x, t, y]``; Euler sampling."""
    if engine == "pyro":
        import pyro

        mlp = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

        class Velocity(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mlp = mlp

            def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
                return self.mlp(torch.cat([x, t[:, None], c], -1))

        v = Velocity()

        def model(x=None, y=None):  # noqa: ANN001, ANN202
            net = pyro.module("velocity", v)
            with pyro.plate("data", y.shape[0]):
                pyro.sample("x", gm.models.ContinuousFlow(net, y, solver="euler", steps=4), obs=x)

        return model
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    from numpyro.contrib.module import eqx_module

    mlp = eqx.nn.MLP(5, 2, 32, 1, activation=jax.nn.silu, key=jax.random.PRNGKey(0))

    def model(x=None, y=None):  # noqa: ANN001, ANN202
        net = eqx_module("velocity", mlp)
        v = lambda x, t, c: jax.vmap(net)(jnp.concatenate([x, t[:, None], c], -1))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("x", gm.models.ContinuousFlow(v, y, event_shape=(2,), solver="euler", steps=4), obs=x)

    return model


# JAX's inputs path is in the default suite through the exact loss and log_prob tests above.
@pytest.mark.parametrize("engine", ["pyro", pytest.param("numpyro", marks=pytest.mark.slow)])
def test_a_conditional_flow_fits_with_inputs(engine: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(256, 2)).astype(np.float32)
    x = (y + 0.3 * rng.normal(size=(256, 2))).astype(np.float32)
    fit = gm.fit(conditional_program(engine), {"x": x, "y": y}, gm.inference.FlowMatching(), steps=5, batch_size=64)
    assert np.isfinite(fit.history["loss"]).all()
    assert np.asarray(fit.sample(inputs={"y": y[:7]})).shape == (7, 2)
    lp = np.asarray(fit.log_prob({"x": x[:8], "y": y[:8]}))
    assert lp.shape == (8,) and np.isfinite(lp).all()
    assert np.asarray(fit.posterior({"x": x[:8], "y": y[:8]}, num_samples=2)).shape == (2, 8, 2)
    tree = fit.to_arviz({"x": x[:8], "y": y[:8]}, num_samples=4, posterior_samples=2)
    assert "y" in tree["constant_data"] and tree.log_likelihood["x"].shape == (1, 1, 8)


def test_refusals_name_the_backends_that_would_work() -> None:
    import pyro
    import pyro.distributions as dist

    from gmppl.cli import make_backend

    def gauss(x=None, n=None):  # noqa: ANN001, ANN202
        m = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", dist.Normal(m, 1.0).to_event(1), obs=x)

    s = gm.models.ScoreMLP(2, width=8)

    def diffusion(x=None, n=None):  # noqa: ANN001, ANN202
        net = pyro.module("score", s)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Diffusion(net, steps=2), obs=x)

    x = gm.datasets.moons(64)
    with pytest.raises(gm.NotSupported, match="velocity field.*Likelihood"):
        gm.fit(gauss, x, gm.inference.FlowMatching(), steps=1)
    with pytest.raises(gm.NotSupported, match="ContinuousFlow.*Score"):
        gm.fit(diffusion, x, gm.inference.FlowMatching(), steps=1)
    with pytest.raises(gm.UnknownName):
        gm.inference.FlowMatching(path="straight")
    with pytest.raises(gm.UnknownName):
        gm.inference.FlowMatching(coupling="sinkhorn")
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(gm.BackendError):
            gm.inference.FlowMatching(sigma_min=bad)
    conditional = {"x": x, "y": x[::-1].copy()}
    with pytest.raises(gm.BackendError, match="context"):
        gm.fit(exact_program("pyro", "ot", 0.0, True), conditional, gm.inference.FlowMatching(coupling="minibatch_ot"))
    assert make_backend("flow_matching") == gm.inference.FlowMatching()
