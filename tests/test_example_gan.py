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


@pytest.mark.parametrize(("engine", "divergences", "chains"), [("numpyro", "js,w1", 1), ("pyro", "kl,reverse_kl", 2)])
def test_gan_ring_example(engine: str, divergences: str, chains: int, tmp_path: Path) -> None:
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
            "--chains",
            str(chains),
            "--out",
            str(out),
        ]
    )
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "ring.png").stat().st_size > 0 and (out / "grid.png").stat().st_size > 0
    assert f"| ring | {divergences.split(',')[0]}" in (out / "report.md").read_text()
    assert set(report["results"]) == {f"{t}/{d}" for t in ("ring", "grid") for d in divergences.split(",")}
    for key, r in report["results"].items():
        assert r["num_modes"] == (8 if key.startswith("ring") else 25)
        assert 0 <= r["modes"] <= r["num_modes"] and 0.0 <= r["high_quality"] <= 1.0
        estimate = np.asarray(r["divergence_estimate"])
        assert estimate.shape == (chains,) and np.all(np.isfinite(estimate))
        assert r["chain"] == int(np.argmin(estimate)) and len(r["every_chain"]) == chains
        assert [r["modes"], r["high_quality"]] == r["every_chain"][r["chain"]]


DIGITS = Path(__file__).resolve().parents[1] / "examples" / "gan_digits.py"


def test_gan_digits_example(tmp_path: Path) -> None:
    """The digits GAN at a tiny scale: files written, every statistic finite, and the two reference rows
    ordered as they must be at any scale: the training images sit closer to the held-out ones than a
    Gaussian does (MMD^2 by more than 3 stderr; the floor's FD below the Gaussian's)."""
    spec = importlib.util.spec_from_file_location("gan_digits", DIGITS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    metrics = mod.main(engine="pyro", steps=100, width=32, batch_size=64, n_samples=500, out=tmp_path)
    for name in ("samples.png", "metrics.json", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    rows = metrics["rows"]
    assert set(rows) == {"train (floor)", "gan (js)", "gaussian (baseline)"}
    for r in rows.values():
        assert all(np.isfinite(v) for v in r.values()), r
        assert r["mmd2_stderr"] > 0 and r["frechet"] >= 0
    floor, base = rows["train (floor)"], rows["gaussian (baseline)"]
    assert base["mmd2"] - floor["mmd2"] > 3 * np.hypot(base["mmd2_stderr"], floor["mmd2_stderr"])
    assert floor["frechet"] < base["frechet"]
    assert metrics["classifier_held_out_accuracy"] > 0.85


# The target is every mode and >= 90% high-quality samples. Measured on these settings (NumPyro, seed 0): JS ring
# 96.9%, grid 89.6% (92.6% mean over seeds 0-2, lowest 89.6%); w1 (two critic steps, penalty 10) ring 96.6%, grid
# 91.4% (90.2% mean over seeds 0-8, lowest 86.0%), short of the bar on some seeds (see the example's docstring).
# The floor sits under the lowest grid fit measured (86.0%) by twice one run's uncertainty there (about 3
# points), so a fit as good as the measured ones passes under another machine's float rounding, and a collapse
# (the old w1 recipe: 6/25, 18.6%; a one-step w1 critic: 0-1/25 modes) fails.
HIGH_QUALITY_FLOOR = 0.80


@pytest.mark.slow
def test_gan_ring_defaults_cover_ring_and_grid_in_10000_steps(tmp_path: Path) -> None:
    """``Adversarial("js")`` and ``Adversarial("w1")`` on their defaults, 2x128 generator, 10000 steps of 256 on
    NumPyro: every mode of the ring and of the grid captured, high-quality share >= ``HIGH_QUALITY_FLOOR``
    (four fits, a few minutes on two CPU cores)."""
    report = _load().main(
        [
            "--engine",
            "numpyro",
            "--width",
            "128",
            "--depth",
            "2",
            "--steps",
            "10000",
            "--divergences",
            "js,w1",
            "--targets",
            "ring,grid",
            "--out",
            str(tmp_path),
        ]
    )
    for key, r in report["results"].items():
        assert r["modes"] == r["num_modes"], (key, r["modes"], r["high_quality"])
        assert r["high_quality"] >= HIGH_QUALITY_FLOOR, (key, r["modes"], r["high_quality"])
