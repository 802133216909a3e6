"""Saved fits: round-trip in a fresh process; corrupt, foreign or pickled checkpoints are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gmppl as gm

ROOT = Path(__file__).resolve().parents[1]
MODELS = textwrap.dedent(
    """
    import gmppl as gm

    def numpyro_ppca(x=None, n=None):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist

        W = numpyro.param("W", 0.1 * jnp.ones((2, 1)))
        mu = numpyro.param("mu", jnp.zeros(2))
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.MultivariateNormal(mu, W @ W.T + s**2 * jnp.eye(2)), obs=x)

    def pyro_gauss(x=None, n=None):
        import pyro
        import pyro.distributions as dist
        import torch

        mu = pyro.param("mu", torch.zeros(2))
        s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)
    """
)


@pytest.fixture
def models(tmp_path):
    (tmp_path / "iomodels.py").write_text(MODELS)
    sys.path.insert(0, str(tmp_path))
    import importlib

    import iomodels

    importlib.reload(iomodels)
    yield iomodels
    sys.path.remove(str(tmp_path))


X = (
    np.random.default_rng(0).normal(size=(200, 1)) @ np.array([[2.0, 1.0]])
    + 0.3 * np.random.default_rng(1).normal(size=(200, 2))
).astype(np.float32)


@pytest.mark.parametrize("name", ["numpyro_ppca", "pyro_gauss"])
def test_save_load_same_log_prob_in_a_fresh_process(models, tmp_path, name):
    fit = gm.fit(getattr(models, name), X, gm.inference.Likelihood(), steps=200, batch_size=100, progress=False)
    out = tmp_path / "fit"
    fit.save(out)
    np.save(tmp_path / "lp.npy", np.asarray(fit.log_prob(X[:20])))
    np.save(tmp_path / "x.npy", X[:20])
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {str(tmp_path)!r})
        import gmppl as gm, iomodels
        fit = gm.load({str(out)!r}, iomodels.{name})
        lp = np.asarray(fit.log_prob(np.load({str(tmp_path / "x.npy")!r})))
        ref = np.load({str(tmp_path / "lp.npy")!r})
        assert np.allclose(lp, ref, rtol=0, atol=1e-6), (lp[:3], ref[:3])
        assert fit.history["loss"].shape == (200,)
        print("same")
        """
    )
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "GMPPL_JAX_CACHE": os.environ["GMPPL_JAX_CACHE"]}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert res.returncode == 0 and "same" in res.stdout, res.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"]["class"] == "Likelihood" and meta["engine"] in ("pyro", "numpyro")


def test_corrupt_checkpoint_is_refused(models, tmp_path):
    fit = gm.fit(models.numpyro_ppca, X, gm.inference.Likelihood(), steps=5, progress=False)
    fit.save(tmp_path / "fit")
    w = tmp_path / "fit" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(gm.CheckpointError, match="corrupt"):
        gm.load(tmp_path / "fit", models.numpyro_ppca)


def test_checkpoint_from_another_model_is_refused(models, tmp_path):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    fit = gm.fit(models.numpyro_ppca, X, gm.inference.Likelihood(), steps=5, progress=False)
    fit.save(tmp_path / "fit")

    def other(x=None, n=None):
        W = numpyro.param("W", 0.1 * jnp.ones((2, 2)))  # another shape
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), W @ W.T + jnp.eye(2)), obs=x)

    with pytest.raises(gm.CheckpointError, match="another model"):
        gm.load(tmp_path / "fit", other)


def test_pickle_is_never_loaded(models, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    (tmp_path / "weights.pkl").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(gm.CheckpointError, match="pickle"):
        gm.load(tmp_path, models.numpyro_ppca)


def test_history_and_data_files_load_without_pickle(models, tmp_path):
    fit = gm.fit(models.pyro_gauss, X, gm.inference.Likelihood(), steps=5, progress=False)
    fit.save(tmp_path / "fit")
    with np.load(tmp_path / "fit" / "history.npz", allow_pickle=False) as h:
        assert "chain0/loss" in h.files
    assert np.load(tmp_path / "fit" / "observed_data.npy", allow_pickle=False).shape == X.shape
