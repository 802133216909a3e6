"""``examples/diffusion_moons.py`` runs end to end on both engines with tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diffusion_moons.py"


def _load():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("diffusion_moons", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_diffusion_moons_example(engine: str, tmp_path: Path) -> None:
    out = tmp_path / engine
    report = _load().main(
        ["--engine", engine, "--steps", "20", "--out", str(out), "--n-eval", "64", "--n-loglik", "8", "--width", "32"]
    )
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "samples.png").stat().st_size > 0 and (out / "trajectory.png").stat().st_size > 0
    assert report["em"]["score_evals"] == 500  # the default Euler-Maruyama grid
    assert report["ode"]["score_evals"] > 6  # at least one adaptive Dopri5 step
    for key in ("em", "ode"):
        assert np.isfinite(report[key]["w1"]) and report[key]["w1"] > 0
    assert np.isfinite(report["heldout_loglik_nats"])


DIGITS = Path(__file__).resolve().parents[1] / "examples" / "diffusion_digits.py"


def test_diffusion_digits_example(tmp_path: Path) -> None:
    """The digits example at a small scale (40 steps, 8 images' likelihood, 48 samples
    of a 100-step Euler–Maruyama): finite numbers, PNGs."""
    import torch

    spec = importlib.util.spec_from_file_location("diffusion_digits", DIGITS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.set_num_threads(1)
    report = mod.main(steps=40, out=tmp_path, n_loglik=8, n_samples=48, sampler_steps=100)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert (tmp_path / "samples.png").stat().st_size > 0 and (tmp_path / "trajectory.png").stat().st_size > 0
    assert report["net"] == "unet" and report["loglik_images"] == 8 and report["score_evals"] == 100
    for key in ("final_loss", "heldout_bits_per_dim", "heldout_bits_per_dim_stderr", "mmd2", "mmd2_stderr"):
        assert np.isfinite(report[key]), key
    # a density on (-1, 1)^64 far from the data costs many bits; log2(17) = 4.09 is the uniform one
    assert 0 < report["heldout_bits_per_dim"] < 12
    # dequantisation round trip: quantise(dequantise(k)) == k
    k = mod.pixels()[:50]
    np.testing.assert_array_equal(mod.quantise(mod.dequantise(k, 0)), k)


CONDITIONAL = Path(__file__).resolve().parents[1] / "examples" / "conditional_diffusion.py"


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_conditional_diffusion_example(engine: str, tmp_path: Path) -> None:
    """The class-conditional moons example with tiny settings: finite numbers per class, the PNG, the report."""
    spec = importlib.util.spec_from_file_location("conditional_diffusion", CONDITIONAL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / engine
    report = mod.main(
        ["--engine", engine, "--steps", "20", "--out", str(out), "--n-eval", "32", "--n-loglik", "8", "--width", "32"]
    )
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "samples.png").stat().st_size > 0
    for k in range(mod.CLASSES):
        for key in ("w1", "w1_guided", "w1_floor_data_vs_data"):
            assert np.isfinite(report[f"class_{k}"][key]) and report[f"class_{k}"][key] > 0
    for key in ("heldout_loglik_nats", "heldout_loglik_stderr", "heldout_loglik_wrong_label_median_nats"):
        assert np.isfinite(report[key]), key
    assert 0 <= report["likelihood_classifier_accuracy"] <= 1
