"""``examples/vae_digits.py`` runs end to end with tiny settings on both engines, and its NumPyro
continuous Bernoulli is the same density as torch's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "vae_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("vae_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_vae_digits_runs(engine, tmp_path):
    metrics = load_example().main(["--engine", engine, "--steps", "30", "--particles", "20", "--out", str(tmp_path)])
    for name in ("reconstructions.png", "samples.png", "latent.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert np.isfinite(metrics["test_elbo_nats_per_image"])
    assert metrics["test_log_px_nats_per_image"] >= metrics["test_elbo_nats_per_image"] - 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpyro_continuous_bernoulli_matches_torch(dtype):
    import jax
    import jax.numpy as jnp
    import torch

    if dtype == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("JAX runs in float32 here")
    cb = load_example().numpyro_continuous_bernoulli()
    logits = np.array([-30.0, -5.0, -0.5, -0.011, -1e-3, 0.0, 2e-3, 0.009, 0.3, 4.0, 25.0], dtype=dtype)
    lg, xx = np.meshgrid(logits, np.linspace(0.0, 1.0, 7).astype(dtype))
    ref = torch.distributions.ContinuousBernoulli(logits=torch.tensor(lg)).log_prob(torch.tensor(xx)).numpy()
    got = np.asarray(cb(logits=jnp.asarray(lg)).log_prob(jnp.asarray(xx)))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)  # torch's Taylor region is |eta| < 0.004
    grads = jax.grad(lambda e: cb(logits=e).log_prob(jnp.asarray(xx)).sum())(jnp.asarray(lg))
    assert np.all(np.isfinite(np.asarray(grads)))
    mean = np.asarray(cb(logits=jnp.asarray(logits)).mean)
    ref_mean = torch.distributions.ContinuousBernoulli(logits=torch.tensor(logits)).mean.numpy()
    np.testing.assert_allclose(mean, ref_mean, atol=1e-4)
