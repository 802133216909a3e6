"""Bad input gets a gmppl error that says what is wrong and what to do, never a raw torch/JAX/numpy error.

Choices made here: a .csv whose first row is not numeric takes it as a header (skipped); ``gmppl sample -n 0``
is an error (``Fit.sample(0)`` returns an empty array); seeds are integers in ``[0, 2**32)``.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

import gmppl as gm
from gmppl._data import check_seed
from gmppl.cli import app

runner = CliRunner()
X = (np.random.default_rng(0).normal(size=(64, 2)) + 1.0).astype(np.float64)  # numpy's default dtype


def pyro_vae(x=None, n=None):
    import pyro
    import pyro.distributions as dist
    import torch

    net = pyro.module("g", _net())
    n = x.shape[0] if x is not None else n
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(net(z), 0.1).to_event(1), obs=x)


_NETS: list = []


def _net():
    import torch

    if not _NETS:
        _NETS.append(torch.nn.Linear(2, 2))
    return _NETS[0]


def numpyro_vae(x=None, n=None):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    W = numpyro.param("W", 0.5 * jnp.eye(2))
    b = numpyro.param("b", jnp.zeros(2))
    n = x.shape[0] if x is not None else n
    with numpyro.plate("data", n):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.sample("x", dist.Normal(z @ W + b, 0.1).to_event(1), obs=x)


def pyro_gauss(x=None, n=None):
    import pyro
    import pyro.distributions as dist
    import torch

    mu = pyro.param("mu", torch.zeros(2))
    n = x.shape[0] if x is not None else n
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)


MODELS = {"pyro": pyro_vae, "numpyro": numpyro_vae}
BACKENDS = {"elbo": gm.inference.ELBO, "adversarial": gm.inference.Adversarial}


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("engine", sorted(MODELS))
def test_float64_and_float16_data_fit_float32_modules(engine, backend, dtype):
    data = X.astype(dtype)
    fit = gm.fit(MODELS[engine], data, BACKENDS[backend](), steps=3, batch_size=32, progress=False)
    assert np.isfinite(fit.history["loss"]).all()
    s = np.asarray(gm._data.to_numpy(fit.sample(4, seed=0)))
    assert s.shape == (4, 2) and s.dtype == np.float32 and np.isfinite(s).all()
    if backend == "elbo":
        lp = fit.log_prob(data[:4])
        assert np.isfinite(np.asarray(getattr(lp, "value", lp))).all()


def test_float64_data_into_a_float64_pyro_program_stays_float64():
    import pyro
    import pyro.distributions as dist
    import torch

    def gauss64(x=None, n=None):
        mu = pyro.param("mu", torch.zeros(2, dtype=torch.float64))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)

    fit = gm.fit(gauss64, X, gm.inference.Likelihood(), steps=3, progress=False)
    assert fit.sample(3, seed=0).dtype == torch.float64


@pytest.mark.parametrize("seed", [-1, 1.5, 2**64, True, "0"])
def test_bad_seed_is_refused(seed):
    with pytest.raises(gm.BackendError, match="seed") as e:
        check_seed(seed)
    assert isinstance(e.value, ValueError)


def test_seed_range_counts_the_chains():
    assert check_seed(2**32 - 1) == 2**32 - 1 and check_seed(np.int64(7)) == 7
    with pytest.raises(gm.BackendError, match="3 chains"):
        check_seed(2**32 - 2, count=3)


@pytest.mark.parametrize("seed", [-1, 1.5, 2**64, 2**32 - 1])
def test_bad_seed_in_fit_is_refused_before_training(seed):
    """2**32 - 1 is a valid seed, but not with two chains (the second would seed 2**32)."""
    with pytest.raises(gm.BackendError, match="seed"):
        gm.fit(pyro_gauss, X, gm.inference.Likelihood(), steps=2, seed=seed, chains=2, progress=False)


@pytest.mark.parametrize("seed", [-1, 1.5, 2**64])
def test_bad_seed_in_sample_is_refused(seed):
    fit = gm.fit(pyro_gauss, X, gm.inference.Likelihood(), steps=2, progress=False)
    with pytest.raises(gm.BackendError, match="seed"):
        fit.sample(3, seed=seed)


def test_negative_sample_count_is_refused():
    fit = gm.fit(pyro_gauss, X, gm.inference.Likelihood(), steps=2, progress=False)
    with pytest.raises(gm.DataError, match="n=-5 must be a non-negative integer"):
        fit.sample(-5)
    assert tuple(fit.sample(0).shape) == (0, 2)


def test_negative_learning_rate_is_refused():
    with pytest.raises(gm.BackendError, match="lr=-0.1 must be a finite number >= 0"):
        gm.fit(pyro_gauss, X, gm.inference.Likelihood(), steps=2, progress=False, optim=-0.1)
    with pytest.raises(gm.BackendError, match="betas"):
        gm.optim.Adam(betas=(0.9, 1.5))


CLI_MODEL = textwrap.dedent(
    """
    import pyro, pyro.distributions as dist, torch

    def gauss(x=None, n=None):
        mu = pyro.param("mu", torch.zeros(2))
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=x)
    """
)


@pytest.fixture
def cli(tmp_path):
    (tmp_path / "m.py").write_text(CLI_MODEL)
    np.save(tmp_path / "d.npy", X.astype(np.float32))
    return tmp_path


def test_csv_with_a_header_row_skips_it(cli):
    rows = "\n".join(f"{a},{b}" for a, b in X[:40])
    (cli / "d.csv").write_text("height,weight\n" + rows + "\n")
    out = cli / "run"
    args = ["fit", f"{cli}/m.py:gauss", "--data", str(cli / "d.csv"), "--steps", "2", "--test-fraction", "0"]
    res = runner.invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = np.load(out / "observed_data.npy")
    assert saved.shape == (40, 2) and np.allclose(saved, X[:40], atol=1e-6)


def test_csv_with_a_text_row_in_the_middle_is_refused(cli):
    (cli / "d.csv").write_text("1,2\n3,oops\n5,6\n")
    res = runner.invoke(app, ["fit", f"{cli}/m.py:gauss", "--data", str(cli / "d.csv"), "--out", str(cli / "run")])
    assert res.exit_code == 2 and "numbers only" in res.output and "oops" in res.output, res.output


def test_cli_negative_learning_rate_is_refused(cli):
    res = runner.invoke(app, ["fit", f"{cli}/m.py:gauss", "--data", str(cli / "d.npy"), "--lr", "-0.1"])
    assert res.exit_code == 2 and "--lr -0.1 must be a positive learning rate" in res.output, res.output


def test_cli_bad_seed_is_refused(cli):
    res = runner.invoke(app, ["fit", f"{cli}/m.py:gauss", "--data", str(cli / "d.npy"), "--seed", "-1"])
    assert res.exit_code == 2 and "--seed=-1 is out of range" in res.output, res.output


def test_cli_sample_zero_is_refused(cli):
    res = runner.invoke(app, ["sample", str(cli / "run"), "-n", "0", "--out", str(cli / "s.npy")])
    assert res.exit_code == 2 and "at least 1" in res.output, res.output
    assert not (cli / "s.npy").exists()


def _pyro_param_numpyro_sample(x=None, n=None):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import pyro
    import torch

    mu = pyro.param("mu", torch.zeros(2))
    n = x.shape[0] if x is not None else n
    with numpyro.plate("data", n):
        numpyro.sample("x", dist.Normal(jnp.asarray(mu.detach().numpy()), 1.0).to_event(1), obs=x)


def _numpyro_param_pyro_sample(x=None, n=None):
    import numpyro
    import pyro
    import pyro.distributions as dist
    import torch

    mu = numpyro.param("mu", np.zeros(2, np.float32))
    n = x.shape[0] if x is not None else n
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(torch.as_tensor(np.asarray(mu)), 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("model", [_pyro_param_numpyro_sample, _numpyro_param_pyro_sample])
def test_program_mixing_pyro_and_numpyro_is_refused(model):
    with pytest.raises(gm.ModelError, match="mixes Pyro and NumPyro"):
        gm.fit(model, X.astype(np.float32), gm.inference.Likelihood(), steps=2, progress=False)


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_a_program_without_a_data_plate_is_refused(engine):
    """``x`` observed as one event of shape (n, 2): its log-density is one number per batch, so it is refused
    (it was scored as one example: per-example densities and minibatch scaling silently wrong)."""
    if engine == "pyro":
        import pyro
        import pyro.distributions as dist
        import torch

        def model(x=None, n=None):
            mu = pyro.param("mu", torch.zeros(2))
            n = x.shape[0] if x is not None else n
            pyro.sample("x", dist.Normal(mu, 1.0).expand([n, 2]).to_event(2), obs=x)

    else:
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        def model(x=None, n=None):
            mu = numpyro.param("mu", jnp.zeros(2))
            n = x.shape[0] if x is not None else n
            numpyro.sample("x", dist.Normal(mu, 1.0).expand([n, 2]).to_event(2), obs=x)

    with pytest.raises(gm.ModelError, match="one event.*data plate"):
        gm.fit(model, X, gm.inference.Likelihood(), steps=2, progress=False)
