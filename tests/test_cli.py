"""The ``gmppl`` command as a user runs it: fit, sample, report; clear errors for bad arguments."""

from __future__ import annotations

import textwrap

import numpy as np
from typer.testing import CliRunner

from gmppl.cli import app

MODEL = textwrap.dedent(
    """
    import numpyro, numpyro.distributions as dist, jax.numpy as jnp

    def gauss(x=None, n=None):
        mu = numpyro.param("mu", jnp.zeros(2))
        s = numpyro.param("s", jnp.ones(2), constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            numpyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)

    def latent(x=None, n=None):
        n = x.shape[0] if x is not None else n
        with numpyro.plate("data", n):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
            numpyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)
    """
)

runner = CliRunner()


def test_fit_then_sample(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    data = (np.random.default_rng(0).normal(size=(300, 2)) * 0.5 + 3.0).astype(np.float32)
    np.save(tmp_path / "d.npy", data)
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "fit",
            f"{tmp_path}/m.py:gauss",
            "--data",
            str(tmp_path / "d.npy"),
            "--steps",
            "400",
            "--batch-size",
            "240",
            "--lr",
            "0.05",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "weights.safetensors").is_file() and (out / "datatree.nc").is_file()
    res = runner.invoke(app, ["sample", str(out), "-n", "5000", "--out", str(tmp_path / "s.npy")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert any(p.suffix == ".png" for p in out.iterdir()) and "wrote" in res.output
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5000, 2)
    # the MLE is the training mean (first 240 rows); 5000 draws of sd 0.5: standard error 0.007
    assert np.allclose(s.mean(0), data[:240].mean(0), atol=0.05)


def test_clear_errors(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    res = runner.invoke(app, ["fit", f"{tmp_path}/nope.py:gauss", "--steps", "2"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["fit", f"{tmp_path}/m.py:missing", "--steps", "2"])
    assert res.exit_code == 2 and "no function 'missing'" in res.output and "gauss" in res.output
    res = runner.invoke(app, ["fit", f"{tmp_path}/m.py:latent", "--backend", "likelihood", "--steps", "2"])
    assert res.exit_code == 2 and "Likelihood needs" in res.output
    res = runner.invoke(app, ["fit", f"{tmp_path}/m.py:gauss", "--data", "nope.csv", "--steps", "2"])
    assert res.exit_code == 2 and "no such file" in res.output
    res = runner.invoke(app, ["fit", f"{tmp_path}/m.py:gauss", "--backend", "magic", "--steps", "2"])
    assert res.exit_code == 2 and "unknown" in res.output
