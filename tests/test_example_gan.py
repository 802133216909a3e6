"""``examples/gan_ring.py`` runs end to end on both engines with tiny settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gan_ring.py"


def _load():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("gan_ring", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(("engine", "divergences"), [("numpyro", "js,w1"), ("pyro", "kl,reverse_kl")])
def test_gan_ring_example(engine: str, divergences: str, tmp_path: Path) -> None:
    out = tmp_path / engine
    report = _load().main(
        [
            "--engine",
            engine,
            "--steps",
            "10",
            "--width",
            "16",
            "--n-eval",
            "200",
            "--divergences",
            divergences,
            "--out",
            str(out),
        ]
    )
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "ring.png").stat().st_size > 0 and (out / "grid.png").stat().st_size > 0
    assert f"| ring | {divergences.split(',')[0]} |" in (out / "report.md").read_text()
    assert set(report["results"]) == {f"{t}/{d}" for t in ("ring", "grid") for d in divergences.split(",")}
    for key, r in report["results"].items():
        assert r["num_modes"] == (8 if key.startswith("ring") else 25)
        assert 0 <= r["modes"] <= r["num_modes"] and 0.0 <= r["high_quality"] <= 1.0
        assert np.isfinite(r["final_divergence_estimate"])
