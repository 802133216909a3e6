"""Quality of the exact-likelihood backend, against closed forms, on both engines.

- Probabilistic PCA (Tipping & Bishop, 1999), ``x = W z + mu + s eps`` with ``z`` integrated out:
  ``x ~ N(mu, W W^T + s^2 I)``. The maximum-likelihood solution is closed-form: ``mu = mean``,
  ``W = U_k (L_k - s^2 I)^{1/2} R``, ``s^2 = mean of the discarded eigenvalues`` of the sample
  covariance. Full-batch Adam must reach its log-likelihood: ``ML - 1e-3 <= fit <= ML + 1e-4`` nats
  per example (above the ML only by float32 rounding, ~1e-6 here), and its covariance to 1%.
- A spline coupling flow on two moons beats the closed-form Gaussian fit on held-out data by a
  stated margin, on both engines, and the two engines agree within optimisation noise.
- ``save -> load`` in a fresh Python process gives the same ``log_prob`` to 1e-6, on both engines.
- On the torch engine the log-density runs as a traced graph: the fit is the one Pyro's handlers give, step for
  step (a spline flow, and a conditional model whose inputs go in with each minibatch).
- A NumPyro program whose network is a flax module (linen ``flax_module`` and ``nnx_module``) fits
  by Likelihood: a linear autoregressive flow spans exactly the 2-d Gaussians, so its ML equals
  the Gaussian's closed-form ML.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gmppl as gm

ML_GAP = 1e-3  # nats/example an optimiser may stop short of the maximum
ROUNDING = 1e-4  # float32 evaluation of a log-likelihood of magnitude ~10
MOONS_MARGIN = 0.75  # nats/example a 400-step flow must beat the Gaussian by (it reaches ~1.3)
ENGINE_AGREEMENT = 0.3  # nats/example; seed-to-seed sd at this scale: 0.01 (Pyro), 0.05 (NumPyro), 3 seeds each


# ---------------------------------------------------------------------- closed forms
def gaussian_ml(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ML mean and covariance (divided by n) of a Gaussian."""
    x = x.astype(np.float64)
    return x.mean(0), np.cov(x.T, bias=True)


def gaussian_loglik(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    from scipy.stats import multivariate_normal

    return multivariate_normal(mu, cov).logpdf(x.astype(np.float64))


def ppca_ml(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Tipping & Bishop's ML solution: ``(mu, C = W W^T + s^2 I, mean log-likelihood)``."""
    mu, s = gaussian_ml(x)
    lam, u = np.linalg.eigh(s)
    lam, u = lam[::-1], u[:, ::-1]
    s2 = lam[k:].mean()
    w = u[:, :k] * np.sqrt(lam[:k] - s2)
    c = w @ w.T + s2 * np.eye(len(mu))
    return mu, c, float(gaussian_loglik(x, mu, c).mean())


# ---------------------------------------------------------------------- PPCA
D, K, N = 5, 2, 400


def ppca_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(D, K)) * np.array([2.0, 1.0])
    x = rng.normal(size=(N, K)) @ w.T + rng.normal(size=D) + 0.5 * rng.normal(size=(N, D))
    w0 = 0.1 * np.random.default_rng(1).normal(size=(D, K))
    return x.astype(np.float32), w0.astype(np.float32)


def ppca_model(engine: str, w0: np.ndarray):
    """``x ~ N(mu, W W^T + s^2 I)``: PPCA with ``z`` integrated analytically (no latent site)."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            w = pyro.param("W", torch.as_tensor(w0))
            mu = pyro.param("mu", torch.zeros(D))
            s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", dist.MultivariateNormal(mu, covariance_matrix=w @ w.T + s**2 * torch.eye(D)), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    def model(x=None, n=None):
        w = numpyro.param("W", jnp.asarray(w0))
        mu = numpyro.param("mu", jnp.zeros(D))
        s = numpyro.param("s", 1.0, constraint=ndist.constraints.positive)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", ndist.MultivariateNormal(mu, w @ w.T + s**2 * jnp.eye(D)), obs=x)

    return model


def as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def observed_dist(fit, x: np.ndarray):
    """The fitted program's distribution of the observed site."""
    if fit.engine == "pyro":
        import torch

        with torch.no_grad():
            return fit.program.trace(x=torch.as_tensor(x)).nodes["x"]["fn"]
    import jax

    return fit.program.trace(fit.program.params, jax.random.PRNGKey(0), x=x)["x"]["fn"]


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_ppca_reaches_closed_form_maximum_likelihood(engine: str) -> None:
    x, w0 = ppca_data()
    mu_ml, c_ml, ll_ml = ppca_ml(x, K)
    fit = gm.fit(
        ppca_model(engine, w0), x, gm.inference.Likelihood(), steps=500, batch_size=N, optim=0.05, progress=False
    )
    ll = float(np.mean(np.asarray(fit.log_prob(x)), dtype=np.float64))
    assert ll_ml - ML_GAP <= ll <= ll_ml + ROUNDING, (ll, ll_ml)
    d = observed_dist(fit, x[:4])
    while not hasattr(d, "loc"):  # NumPyro's plate wraps it in an ExpandedDistribution
        d = d.base_dist
    loc, cov = as_numpy(d.loc).reshape(-1, D)[0], as_numpy(d.covariance_matrix).reshape(-1, D, D)[0]
    np.testing.assert_allclose(loc, mu_ml, atol=0.01 * np.abs(mu_ml).max())
    np.testing.assert_allclose(cov, c_ml, atol=0.01 * np.abs(c_ml).max())


# ---------------------------------------------------------------------- two moons
def flow_model(engine: str, f, dim: int = 2):
    """``x = f(z)``, ``z ~ N(0, I)``, for a flow ``f`` from ``gm.models.flows``."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            pyro.module("flow", f)
            base = dist.Normal(torch.zeros(dim), 1.0).to_event(1)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.Pushforward(base, f), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import eqx_module

    def model(x=None, n=None):
        g = eqx_module("flow", f)
        base = ndist.Normal(jnp.zeros(dim), 1.0).to_event(1)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.Pushforward(base, g), obs=x)

    return model


def moons_split(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    train = make_moons(n, noise=0.05, random_state=0)[0].astype(np.float32)
    test = make_moons(n, noise=0.05, random_state=1)[0].astype(np.float32)
    return train, test


def moons_heldout(engine: str, *, steps: int, layers: int, hidden: int, seed: int = 0) -> float:
    import torch

    train, test = moons_split()
    torch.manual_seed(seed)
    f = gm.models.flows.spline_coupling(2, engine=engine, layers=layers, hidden=(hidden, hidden), key=seed)
    fit = gm.fit(
        flow_model(engine, f), train, gm.inference.Likelihood(), steps=steps, batch_size=256, optim=5e-3, seed=seed,
        progress=False,
    )  # fmt: skip
    return float(np.mean(np.asarray(fit.log_prob(test)), dtype=np.float64))


def test_spline_flow_beats_gaussian_on_moons_on_both_engines() -> None:
    train, test = moons_split()
    gauss = float(gaussian_loglik(test, *gaussian_ml(train)).mean())  # about -1.88
    got = {engine: moons_heldout(engine, steps=400, layers=4, hidden=32) for engine in ("pyro", "numpyro")}
    for engine, ll in got.items():
        assert ll >= gauss + MOONS_MARGIN, (engine, ll, gauss)
    assert abs(got["pyro"] - got["numpyro"]) <= ENGINE_AGREEMENT, got


@pytest.mark.slow
def test_spline_flow_on_moons_longer_runs_agree_across_engines() -> None:
    """3 seeds per engine, 2000 steps: margin >= 1.4 nats, engine means within 4 standard errors (+0.02)."""
    train, test = moons_split()
    gauss = float(gaussian_loglik(test, *gaussian_ml(train)).mean())
    got = {
        e: np.array([moons_heldout(e, steps=2000, layers=6, hidden=64, seed=s) for s in range(3)])
        for e in ("pyro", "numpyro")
    }
    for engine, lls in got.items():
        assert lls.min() >= gauss + 1.4, (engine, lls, gauss)
    se = np.sqrt(sum(v.var(ddof=1) / len(v) for v in got.values()))
    assert abs(got["pyro"].mean() - got["numpyro"].mean()) <= 4 * se + 0.02, got


# ---------------------------------------------------------------------- save -> load in a fresh process
MODELS_SOURCE = '''
"""Both engines' flow programs, built the same way in every process that imports this file."""
import jax.numpy as jnp
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as dist
import torch
from numpyro.contrib.module import eqx_module

import gmppl as gm

torch.manual_seed(123)  # initial weights differ from the parent's, so only a real load can agree
pyro_flow = gm.models.flows.spline_coupling(2, layers=2, hidden=(16, 16))
jax_flow = gm.models.flows.spline_coupling(2, engine="numpyro", layers=2, hidden=(16, 16), key=123)


def pyro_model(x=None, n=None):
    pyro.module("flow", pyro_flow)
    with pyro.plate("data", x.shape[0] if x is not None else n):
        pyro.sample("x", gm.models.Pushforward(dist.Normal(torch.zeros(2), 1.0).to_event(1), pyro_flow), obs=x)


def numpyro_model(x=None, n=None):
    g = eqx_module("flow", jax_flow)
    with numpyro.plate("data", x.shape[0] if x is not None else n):
        numpyro.sample("x", gm.models.Pushforward(ndist.Normal(jnp.zeros(2), 1.0).to_event(1), g), obs=x)
'''

CHILD = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {folder!r})
import flow_programs
import gmppl as gm
x = np.load({x!r})
out = {{}}
for engine in ("pyro", "numpyro"):
    fit = gm.load({folder!r} + "/" + engine, getattr(flow_programs, engine + "_model"))
    out[engine] = np.asarray(fit.log_prob(x), dtype=np.float64).tolist()
print(json.dumps(out))
"""


def test_save_load_in_a_fresh_process_gives_the_same_log_prob(tmp_path: Path) -> None:
    import importlib.util

    import torch

    (tmp_path / "flow_programs.py").write_text(MODELS_SOURCE)
    spec = importlib.util.spec_from_file_location("flow_programs_parent", tmp_path / "flow_programs.py")
    programs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(programs)
    torch.manual_seed(0)
    for p in programs.pyro_flow.parameters():  # the parent starts from other weights than the child
        p.data.normal_(0, 0.3)
    train, test = moons_split(400)
    np.save(tmp_path / "x.npy", test[:50])
    here = {}
    for engine in ("pyro", "numpyro"):
        model = getattr(programs, f"{engine}_model")
        fit = gm.fit(model, train, gm.inference.Likelihood(), steps=30, batch_size=128, seed=3, progress=False)
        fit.save(tmp_path / engine)
        here[engine] = np.asarray(fit.log_prob(test[:50]), dtype=np.float64)
    child = CHILD.format(folder=str(tmp_path), x=str(tmp_path / "x.npy"))
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    there = json.loads(run.stdout.strip().splitlines()[-1])
    for engine in ("pyro", "numpyro"):
        np.testing.assert_allclose(np.array(there[engine]), here[engine], atol=1e-6, rtol=0, err_msg=engine)


# ---------------------------------------------------------------------- flax networks in NumPyro programs
def _linen_arn():
    import flax.linen as nn
    import jax.numpy as jnp

    class LinearAR(nn.Module):
        """Autoregressive ``(mean, log_scale)`` on 2-d x: mean_2 linear in x_1, other entries constants."""

        @nn.compact
        def __call__(self, x):
            slope = nn.Dense(1)(x[..., :1])
            b = self.param("b", nn.initializers.zeros, (3,))
            mean = jnp.concatenate([jnp.broadcast_to(b[:1], slope.shape), slope], -1)
            return mean, jnp.broadcast_to(b[1:], x.shape)

    return LinearAR()


def _nnx_arn():
    import jax.numpy as jnp
    from flax import nnx

    class LinearAR(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.dense = nnx.Linear(1, 1, rngs=rngs)
            self.b = nnx.Param(jnp.zeros(3))

        def __call__(self, x):
            slope = self.dense(x[..., :1])
            b = self.b[...]
            mean = jnp.concatenate([jnp.broadcast_to(b[:1], slope.shape), slope], -1)
            return mean, jnp.broadcast_to(b[1:], x.shape)

    return LinearAR(nnx.Rngs(0))


@pytest.mark.parametrize("flavour", ["flax_module", "nnx_module"])
def test_numpyro_program_with_a_flax_network_fits_by_likelihood(flavour: str) -> None:
    """``x = IAF^{-1}(z)`` with a linear flax conditioner spans the 2-d Gaussians: its ML is the Gaussian's."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.contrib.module import flax_module, nnx_module
    from numpyro.distributions.flows import InverseAutoregressiveTransform

    net = _linen_arn() if flavour == "flax_module" else _nnx_arn()

    def model(x=None, n=None):
        arn = flax_module("arn", net, input_shape=(1, 2)) if flavour == "flax_module" else nnx_module("arn", net)
        base = ndist.Normal(jnp.zeros(2), 1.0).to_event(1)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.Pushforward(base, InverseAutoregressiveTransform(arn).inv), obs=x)

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]]) + np.array([1.0, -2.0])).astype(np.float32)
    ll_ml = float(gaussian_loglik(x, *gaussian_ml(x)).mean())
    fit = gm.fit(model, x, gm.inference.Likelihood(), steps=600, batch_size=500, optim=0.05, progress=False)
    assert any(k.startswith("arn$") for k in fit.program.params)
    ll = float(np.mean(np.asarray(fit.log_prob(x)), dtype=np.float64))
    assert ll_ml - ML_GAP <= ll <= ll_ml + ROUNDING, (ll, ll_ml)


def conditional_gaussian(x=None, y=None):
    import pyro
    import pyro.distributions as dist
    import torch

    a = pyro.param("a", torch.zeros(1))
    s = pyro.param("s", torch.ones(1), constraint=dist.constraints.positive)
    with pyro.plate("data", y.shape[0]):
        pyro.sample("x", dist.Normal(a * y, s).to_event(1), obs=x)


@pytest.mark.parametrize("case", ["flow", "conditional"])
def test_the_traced_torch_loss_fits_exactly_as_the_handlers_do(case: str) -> None:
    """``Likelihood(jit=True)`` (the default) and ``jit=False`` from one seed: the same losses at every step and
    the same parameters, bit for bit, with the graph in use."""
    from gmppl.models import zoo

    rng = np.random.default_rng(0)
    if case == "flow":
        data, model = gm.datasets.moons(256, seed=0), lambda: zoo.flow(2, engine="pyro", layers=2, hidden=(16,))
    else:
        y = rng.normal(size=(256, 1)).astype(np.float32)
        data, model = {"x": 2 * y + rng.normal(size=(256, 1)).astype(np.float32), "y": y}, lambda: conditional_gaussian
    fits = [
        gm.fit(model(), data, gm.inference.Likelihood(jit=jit), steps=60, batch_size=64, progress=False, seed=1)
        for jit in (True, False)
    ]
    np.testing.assert_array_equal(fits[0].history["loss"], fits[1].history["loss"])
    for k, v in fits[0].params.items():
        np.testing.assert_array_equal(v, fits[1].params[k])
    graphs = fits[0].plan.graphs
    assert graphs and all(g is not None for g in graphs.values())
    assert not fits[1].plan.graphs
