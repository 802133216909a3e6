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
