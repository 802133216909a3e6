"""``examples/flow_moons.py`` runs end to end on both engines with tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flow_moons.py"


def _load():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("flow_moons", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("engine", ["pyro", "numpyro"])
def test_flow_moons_example(engine: str, tmp_path: Path) -> None:
    out = tmp_path / engine
    args = ["--engine", engine, "--steps", "100", "--out", str(out), "--layers", "2", "--hidden", "16"]
    report = _load().main([*args, "--lr", "1e-2", "--n-train", "500", "--n-test", "300", "--grid", "20"])
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "flow_moons.png").stat().st_size > 0
    assert np.isfinite(report["heldout_loglik_nats"]) and report["heldout_loglik_stderr"] > 0
    # 100 steps already beat the best Gaussian (a 2-layer flow contains it up to the spline box)
    assert report["heldout_loglik_nats"] > report["gaussian_heldout_loglik_nats"]
