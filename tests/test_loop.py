"""The one training loop in ``gm.fit``, the same on both engines: ``Fit.params``, optimisers from the PPLs,
validation and early stopping, callbacks, NaN stop-and-restore, and a JAX chunk compiled once."""

from __future__ import annotations

import numpy as np
import pytest
from test_fit import numpyro_gauss, pyro_gauss

import gmppl as gm

MAKE = {"pyro": pyro_gauss, "numpyro": numpyro_gauss}
ENGINES = ["pyro", "numpyro"]


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(3)
    return (rng.normal(size=(300, 2)) * np.array([0.5, 2.0]) + np.array([1.0, -3.0])).astype(np.float32)


def _fit(engine: str, x: np.ndarray, **kw):
    kw.setdefault("steps", 50)
    kw.setdefault("batch_size", 100)
    kw.setdefault("optim", gm.optim.Adam(0.05))
    return gm.fit(MAKE[engine](), x, gm.inference.Likelihood(), progress=False, **kw)


@pytest.mark.parametrize("engine", ENGINES)
def test_params_are_constrained_numpy(engine: str, data: np.ndarray) -> None:
    """``Fit.params`` gives what ``param`` returns in the program: ``s`` constrained positive, as numpy;
    the density it implies is the fit's."""
    fit = _fit(engine, data)
    p = fit.params
    assert set(p) == {"mu", "s"} and all(isinstance(v, np.ndarray) for v in p.values())
    assert np.all(p["s"] > 0)
    from scipy.stats import norm

    want = norm(p["mu"], p["s"]).logpdf(data[:5]).sum(-1)
    np.testing.assert_allclose(np.asarray(fit.log_prob(data[:5])), want, rtol=1e-5)


def test_params_of_an_ensemble_have_a_chain_axis(data: np.ndarray) -> None:
    fit = _fit("numpyro", data, chains=2)
    assert fit.params["mu"].shape == (2, 2)


def test_pyro_optim_is_the_same_adam(data: np.ndarray) -> None:
    """``pyro.optim.Adam({"lr": a})`` builds torch's Adam with those arguments: the same steps as
    ``gm.optim.Adam(a)`` (fused there: equal up to float32 rounding)."""
    import pyro.optim

    a = _fit("pyro", data, optim=pyro.optim.Adam({"lr": 0.05}))
    b = _fit("pyro", data, optim=gm.optim.Adam(0.05))
    np.testing.assert_allclose(a.params["mu"], b.params["mu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-4)


def test_numpyro_optim_is_the_same_adam(data: np.ndarray) -> None:
    import numpyro.optim

    a = _fit("numpyro", data, optim=numpyro.optim.Adam(0.05))
    b = _fit("numpyro", data, optim=gm.optim.Adam(0.05))
    np.testing.assert_allclose(a.params["mu"], b.params["mu"], rtol=1e-4, atol=1e-5)


def test_an_optimiser_of_the_other_engine_is_refused(data: np.ndarray) -> None:
    import numpyro.optim
    import pyro.optim

    with pytest.raises(gm.BackendError, match="NumPyro optimiser"):
        _fit("pyro", data, optim=numpyro.optim.Adam(0.05))
    with pytest.raises(gm.BackendError, match="pyro.optim"):
        _fit("numpyro", data, optim=pyro.optim.Adam({"lr": 0.05}))


@pytest.mark.parametrize("engine", ENGINES)
def test_validation_loss_is_the_held_out_objective(engine: str, data: np.ndarray) -> None:
    """For ``Likelihood`` the validation loss is ``-mean log p(x_val)`` at the step it was taken; the last
    one is taken at the last step, so it equals the fitted model's."""
    fit = _fit(engine, data[:200], validation=data[200:], validate_every=20, steps=50)
    h = fit.history
    assert list(h["val_step"]) == [20, 40, 50] and len(h["val_loss"]) == 3
    assert len(h["loss"]) == 50
    np.testing.assert_allclose(h["val_loss"][-1], -np.asarray(fit.log_prob(data[200:])).mean(), rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_patience_stops_and_keeps_the_best_validated_values(engine: str, data: np.ndarray) -> None:
    """Held-out data from another distribution (N(0, 1)) gets worse from the first step as the fit moves to the
    training data (mean (1, -3)): the fit stops after ``patience`` validations without improvement and
    returns the values of the best one, the first."""
    other = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    fit = _fit(engine, data, validation=other, validate_every=5, patience=3, steps=500)
    h = fit.history
    assert list(h["val_step"]) == [5, 10, 15, 20] and fit.config["steps_run"] == 20
    assert np.all(np.diff(h["val_loss"]) > 0)
    np.testing.assert_allclose(-np.asarray(fit.log_prob(other)).mean(), h["val_loss"][0], rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
def test_callbacks_run_at_one_frequency_and_see_the_values(engine: str, data: np.ndarray) -> None:
    seen: list[tuple] = []
    _fit(engine, data, steps=250, callbacks=[lambda step, m, params: seen.append((step, m["loss"], params["mu"]))])
    assert [s for s, _, _ in seen] == [100, 200, 250]
    assert all(np.isfinite(loss) and mu.shape == (2,) for _, loss, mu in seen)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_callback_that_raises_does_not_lose_the_fit(engine: str, data: np.ndarray) -> None:
    def stop(step: int, metrics: dict) -> None:
        if step >= 200:
            raise RuntimeError("enough")

    with pytest.raises(gm.TrainingError, match="callback raised at step 200") as info:
        _fit(engine, data, steps=1000, callbacks=[stop])
    fit = info.value.fit
    assert len(fit.history["loss"]) == 200
    assert np.asarray(fit.sample(3)).shape == (3, 2)
    assert np.isfinite(np.asarray(fit.log_prob(data[:3]))).all()


def test_pyro_flow_at_full_batch_trains() -> None:
    """A spline flow fit with ``batch_size >= len(data)`` (one tensor every step) used to fail with "backward
    through the graph a second time" (the transform's cache kept the old graph); it trains now and its
    held-out log-likelihood improves."""
    import pyro
    import pyro.distributions as dist
    import torch

    flow = gm.models.flows.spline_coupling(2)

    def model(x=None, n=None):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
            pyro.sample("x", gm.models.Pushforward(base, flow), obs=x)

    x = gm.datasets.moons(100)
    fit = gm.fit(model, x, steps=30, batch_size=500, progress=False)
    assert fit.history["loss"][-1] < fit.history["loss"][0]


def test_pyro_sample_without_seed_is_fresh(data: np.ndarray) -> None:
    fit = _fit("pyro", data, steps=5)
    a, b = np.asarray(fit.sample(4)), np.asarray(fit.sample(4))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(np.asarray(fit.sample(4, seed=1)), np.asarray(fit.sample(4, seed=1)))


def numpyro_scalar_gauss():
    """Parameters started from Python floats: weakly typed arrays in the first carry."""
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        m = numpyro.param("m", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", dist.Normal(m, s).expand([2]).to_event(1), obs=x)

    return model


@pytest.mark.parametrize("make", [numpyro_gauss, numpyro_scalar_gauss])
def test_the_jax_chunk_compiles_once(data: np.ndarray, make) -> None:
    """Three chunks, the last one partial, run one compiled program (the carry stays committed to the device
    and strongly typed)."""
    from gmppl.engines import make_loop, make_program

    backend = gm.inference.Likelihood()
    program = make_program("numpyro", make(), observed="x", latent="z", device=None)
    info = program.inspect(data[:8])
    plan = backend.prepare(program, info, data[:8], seed=0)
    loop = make_loop("numpyro", [program], backend, [plan], data, batch_size=64, steps=250)
    state = loop.init([0], gm.optim.Adam(0.05))
    for k in (100, 100, 50):
        state, metrics = loop.run_chunk(state, k)
        assert metrics["loss"].shape == (1, k)
    assert loop._run._cache_size() == 1
    # the partial chunk took exactly its 50 steps: Adam counted 250 updates
    assert int(state[0]["opt_state"][0].count) == 250


def test_progress_bar_shows_in_a_notebook(monkeypatch) -> None:
    """In a Jupyter kernel stderr is no terminal, yet ``tqdm.auto`` draws a widget there: the bar is on."""
    import sys
    import types

    from gmppl import progress

    class ZMQInteractiveShell:  # the kernel's shell class, by name
        pass

    shell = ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.delenv("CI", raising=False)
    assert progress._in_notebook()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress._in_notebook()
