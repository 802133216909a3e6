"""Every user error of ``docs/design.md`` ("Bad input") gets a gmppl exception before any training step."""

from __future__ import annotations

import numpy as np
import pytest

import gmppl as gm


def pyro_flow():
    import pyro
    import pyro.distributions as dist
    import pyro.distributions.transforms as T
    import torch

    flow = T.affine_coupling(2, hidden_dims=[8])

    def model(x=None, n=None):
        pyro.module("flow", flow)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", gm.models.Pushforward(dist.Normal(torch.zeros(2), 1.0).to_event(1), flow), obs=x)

    return model


def pyro_latent():
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        w = pyro.param("w", torch.ones(2))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z[:, None] * w, 0.1).to_event(1), obs=x)

    return model


def numpyro_implicit():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        w = numpyro.param("w", jnp.ones(2))
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.deterministic("x", jnp.tanh(z[:, None] * w))

    return model


X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)


def never_called(step, metrics):  # a training step happened: the error came too late
    raise AssertionError(f"training reached step {step} before the error")


def refuse(model, data, backend=None, **kw):
    with pytest.raises((ValueError, TypeError)) as info:
        gm.fit(
            model, data, backend or gm.inference.Likelihood(), steps=3, callbacks=[never_called], progress=False, **kw
        )
    assert type(info.value).__module__.startswith("gmppl"), type(info.value)
    return str(info.value)


def test_nan_in_data():
    bad = X.copy()
    bad[5, 1] = np.nan
    msg = refuse(pyro_flow(), bad)
    assert "NaN" in msg and "(5, 1)" in msg


def test_inf_in_data():
    bad = X.copy()
    bad[0, 0] = np.inf
    assert "inf" in refuse(pyro_flow(), bad)


def test_wrong_width():
    msg = refuse(pyro_flow(), np.ones((10, 3), np.float32))
    assert "(3,)" in msg and "(2,)" in msg


def test_empty_data():
    assert "empty" in refuse(pyro_flow(), np.ones((0, 2), np.float32))


def test_wrong_dtype():
    assert "dtype" in refuse(pyro_flow(), np.array([["a", "b"]] * 4))


def test_scalar_data():
    assert "scalar" in refuse(pyro_flow(), np.float32(3.0))


def test_torch_and_jax_data_are_accepted_and_checked():
    import jax.numpy as jnp
    import torch

    bad = torch.as_tensor(X).clone()
    bad[2, 0] = float("nan")
    assert "NaN" in refuse(pyro_flow(), bad)
    assert "NaN" in refuse(pyro_flow(), jnp.asarray(bad.numpy()))


def test_no_observed_site():
    msg = refuse(pyro_flow(), X, observed="y")
    assert "'y'" in msg and "observed=" in msg


def test_likelihood_refuses_a_latent_model_and_names_alternatives():
    msg = refuse(pyro_latent(), X)
    assert "ELBO" in msg


def test_likelihood_refuses_an_implicit_model_and_points_to_adversarial():
    msg = refuse(numpyro_implicit(), X)
    assert "implicit" in msg


def test_program_that_is_neither_pyro_nor_numpyro():
    def model(x=None, n=None):
        return None

    assert "engine" in refuse(model, X)


def test_unknown_engine_and_bad_settings():
    assert "engine" in refuse(pyro_flow(), X, engine="stan")
    for kw in ({"chains": 0},):
        refuse(pyro_flow(), X, **kw)
    with pytest.raises(gm.BackendError):
        gm.fit(pyro_flow(), X, gm.inference.Likelihood(), steps=0)
    with pytest.raises(gm.BackendError):
        gm.fit(pyro_flow(), X, "likelihood", steps=3)


def test_device_that_is_not_there():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "cuda" in refuse(pyro_flow(), X, device="cuda")
    assert "not" in refuse(pyro_flow(), X, device="quantum")
    assert "cuda" in refuse(numpyro_implicit(), X, gm.inference.Likelihood(), device="cuda:3")


def test_devices_that_are_not_there_or_do_not_fit():
    """``devices=``: more than JAX sees, not a count or a list of devices, a device twice, a Pyro program (2 devices
    and uneven batches or chains are refused in ``tests/devices_job.py``, which has 2)."""
    import jax

    if jax.device_count() == 1:
        assert "JAX sees 1" in refuse(numpyro_implicit(), X, devices=2)
    assert "JAX sees" in refuse(numpyro_implicit(), X, devices=jax.device_count() + 1)
    assert "JAX sees" in refuse(numpyro_implicit(), X, devices=0)
    for bad in ("2", True, [], ["cpu"]):
        assert "pass a number of devices" in refuse(numpyro_implicit(), X, devices=bad)
    assert "twice" in refuse(numpyro_implicit(), X, devices=[jax.devices()[0]] * 2)
    assert "torchrun" in refuse(pyro_flow(), X, devices=1)


def test_nan_during_training_stops_with_the_step_and_keeps_last_good_params():
    import pyro
    import pyro.distributions as dist
    import torch

    def model(x=None, n=None):
        mu = pyro.param("mu", torch.zeros(2))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    data = np.full((32, 2), 3e19, np.float32)  # (x - mu)^2 overflows float32: the loss is inf at once
    with pytest.raises(gm.TrainingError) as info:
        gm.fit(model, data, gm.inference.Likelihood(), steps=100, batch_size=32, progress=False)
    assert "step 0" in str(info.value)


def test_nan_during_training_numpyro():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def model(x=None, n=None):
        mu = numpyro.param("mu", jnp.zeros(2))
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    data = np.full((32, 2), 3e19, np.float32)
    with pytest.raises(gm.TrainingError) as info:
        gm.fit(model, data, gm.inference.Likelihood(), steps=100, batch_size=32, progress=False)
    assert "step 0" in str(info.value)


# ---------------------------------------------------------------------- the program's signature
def not_to_be_run(*args, **kwargs):
    raise AssertionError("the program ran before its signature was checked")


def test_program_with_another_signature_is_told_what_gmppl_calls():
    """``def model(data)``: the error names the signature and what is missing, not the engine."""

    def model(data):
        not_to_be_run()

    msg = refuse(model, X)
    assert "model(data)" in msg and "no parameter for the data" in msg and "model(x=None, n=None)" in msg
    assert "engine=" not in msg


def test_program_with_a_required_extra_parameter():
    def model(x, y):
        not_to_be_run()

    msg = refuse(model, X)
    assert "requires ['y']" in msg and "as inputs" in msg


def test_program_without_n_is_called_without_it_and_positional_only_x_is_refused():
    """``n`` goes only to a program that takes it; the data go by keyword, so a positional-only ``x`` cannot
    take them."""
    from gmppl.engines import check_signature

    def no_n(x=None):
        not_to_be_run()

    def positional(x=None, /, n=None):
        not_to_be_run()

    assert not check_signature(no_n).takes_n
    assert "positional-only" in refuse(positional, X)


def test_signature_check_reads_partial_kwargs_and_unreadable_signatures():
    """``functools.partial`` is judged by the parameters it leaves, ``**kwargs`` takes x and n, and a
    callable whose signature cannot be read is run as before (detection decides)."""
    import functools
    import inspect

    import pyro
    import pyro.distributions as dist

    from gmppl.engines import check_signature, detect_engine

    def with_scale(scale, x=None, n=None):
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(0.0, scale).expand([2]).to_event(1), obs=x)

    assert detect_engine(functools.partial(with_scale, 2.0), X[:4]) == "pyro"
    with pytest.raises(gm.errors.ModelError, match=r"requires \['scale'\]"):
        detect_engine(functools.partial(with_scale, n=3), X[:4])

    def kwargs_only(**kw):
        with_scale(1.0, **kw)

    assert detect_engine(kwargs_only, X[:4]) == "pyro"

    class Unreadable:
        __signature__ = "not a signature"  # inspect.signature cannot read it

        def __call__(self, x=None, n=None):
            with_scale(1.0, x=x, n=n)

    with pytest.raises((TypeError, ValueError)):
        inspect.signature(Unreadable())
    check_signature(Unreadable())
    assert detect_engine(Unreadable(), X[:4]) == "pyro"


def test_data_go_under_the_observed_name_or_x():
    """The data go to the program under the observed site's name (``model(obs=None, n=None)`` with
    ``observed="obs"``), or under ``x`` for a program that names its data argument ``x`` (Pyro's examples)."""
    import pyro
    import pyro.distributions as dist
    import torch

    def named(obs=None, n=None):
        with pyro.plate("data", obs.shape[0] if obs is not None else n):
            pyro.sample("obs", dist.Normal(pyro.param("mu", torch.zeros(2)), 1.0).to_event(1), obs=obs)

    def as_x(x=None, n=None):
        named(obs=x, n=n)

    for model in (named, as_x):
        fit = gm.fit(model, X, gm.inference.Likelihood(), observed="obs", steps=2, progress=False)
        assert fit.params["mu"].shape == (2,)


def _batch_mixing_field(engine: str, kind: str):
    """A program whose velocity/score net sums over the batch: right on one example (so its event shape is found),
    one row for a batch of any size, which an ODE or SDE would broadcast over every example."""
    if engine == "pyro":
        import pyro
        import torch

        class Mixing(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(2))

            def forward(self, x, t):
                return (x * self.w).sum(0, keepdim=True)

        net = Mixing()
        build = gm.models.ContinuousFlow if kind == "velocity" else gm.models.Diffusion

        def model(x=None, n=None):
            pyro.module("net", net)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", build(net), obs=x)

        return model
    import jax.numpy as jnp
    import numpyro

    def field(x, t):
        return x.sum(0, keepdims=True)

    field.event_shape = (2,)
    build = gm.models.ContinuousFlow if kind == "velocity" else gm.models.Diffusion

    def jmodel(x=None, n=None):
        numpyro.param("unused", jnp.zeros(1))
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", build(field), obs=x)

    return jmodel


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
@pytest.mark.parametrize("kind", ["velocity", "score"])
def test_a_field_network_that_mixes_the_batch_is_refused_before_step_one(engine: str, kind: str) -> None:
    backend = gm.inference.FlowMatching() if kind == "velocity" else gm.inference.Score()
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(gm.ModelError, match=f"the {kind} network maps a batch of shape"):
        gm.fit(_batch_mixing_field(engine, kind), x, backend, steps=2, progress=False)


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
@pytest.mark.parametrize("model", ["continuous_flow", "diffusion"])
def test_setting_up_a_fit_solves_no_ode_or_sde(engine: str, model: str, monkeypatch) -> None:
    """Inspection reads the shapes of a generating run, not its values: an ODE/SDE-sampled site checks its network
    on a batch and returns zeros, where it solved (on JAX compiling a sampler for about a second)."""
    import importlib

    from gmppl.models import zoo

    side = "torch" if engine == "pyro" else "jax"
    name = f"{side.capitalize()}{'ContinuousFlow' if model == 'continuous_flow' else 'Diffusion'}"
    cls = getattr(importlib.import_module(f"gmppl.models.{model}_{side}"), name)

    def no_solve(*args, **kwargs):
        raise AssertionError("a sampler ran while setting up the fit")

    monkeypatch.setattr(cls, "generate", no_solve)
    backend = gm.inference.FlowMatching() if model == "continuous_flow" else gm.inference.Score()
    build = zoo.continuous_flow if model == "continuous_flow" else zoo.diffusion
    fit = gm.fit(build(2, engine=engine), gm.datasets.moons(64, seed=0), backend, steps=2, progress=False)
    assert np.isfinite(fit.history["loss"]).all()


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_a_guide_that_does_not_follow_the_batch_is_refused(engine: str) -> None:
    """An autoguide over per-example latents holds one location per training example: on a minibatch it would
    score the wrong rows. Checked before step 1 by running the guide on one example fewer (on JAX abstractly)."""
    if engine == "pyro":
        from pyro.infer.autoguide import AutoNormal

        model = pyro_latent()
    else:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer.autoguide import AutoNormal

        def model(x=None, n=None):
            w = numpyro.param("w", jnp.ones(2))
            with numpyro.plate("data", x.shape[0] if x is not None else n):
                z = numpyro.sample("z", dist.Normal(0.0, 1.0))
                numpyro.sample("x", dist.Normal(z[:, None] * w, 0.1).to_event(1), obs=x)

    x = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    with pytest.raises(gm.BackendError, match="the guide runs on 8 examples but on 7 its sites"):
        gm.fit(
            model,
            x,
            gm.inference.ELBO(guide=AutoNormal(model)),
            steps=2,
            batch_size=8,
            progress=False,
            callbacks=[never_called],
        )
