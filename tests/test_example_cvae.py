"""``examples/cvae_digits.py`` runs end to end with tiny settings and prints finite numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "cvae_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("cvae_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("engine", ["pyro", pytest.param("numpyro", marks=pytest.mark.slow)])
def test_cvae_digits_runs(engine, tmp_path, capsys):
    argv = ["--engine", engine, "--steps", "20", "--particles", "10", "--per-class", "3", "--out", str(tmp_path)]
    metrics = load_example().main(argv)
    for name in ("samples.png", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for key in ("test_log_px_given_y", "test_log_px_unconditional", "gap_nats", "gap_stderr"):
        assert math.isfinite(metrics[key]), key
    assert metrics["gap_nats"] == pytest.approx(metrics["test_log_px_given_y"] - metrics["test_log_px_unconditional"])
    assert 0.5 < metrics["classifier_test_accuracy"] <= 1.0
    assert 0.0 <= metrics["hit_rate_draws"] <= 1.0 and 0.0 <= metrics["hit_rate_decoder_means"] <= 1.0
    printed = capsys.readouterr().out
    assert "log p(x \\| y)" in printed and "nan" not in printed.lower()
