"""``devices=N`` on NumPyro programs: each batch split over a device mesh gives the one-device fit up to reduction
order (2 forced host devices in a subprocess); bad device requests are refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gmppl as gm

HERE = Path(__file__).parent


def test_two_devices_give_the_one_device_fit() -> None:
    """Adam steps on 1 and on 2 devices: the same parameters up to float32 reassociation of the batch mean
    (relative 1e-3: the difference is rounding, amplified by the optimiser's steps; 100 steps for one objective,
    10 for the adversarial game, whose feedback amplifies it faster). The noise is the same draw on both
    layouts (step 0's ELBO and GAN losses agree to float32 rounding). An ensemble (``chains=2``) spreads one
    chain per device and equals the one-device ensemble (relative 1e-4); its sharded state checkpoints and
    resumes bitwise on 2 devices and to rounding on 1. Bad requests are refused before training.
    About 20 s with JAX's compilation cache warm, about 70 s cold, on 2 shared cores."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    run = subprocess.run(
        [sys.executable, str(HERE / "devices_job.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    for name in ("likelihood", "elbo", "adversarial"):
        assert out[name] < 1e-3, (name, out[name])
        assert out[f"{name}_loss0"] < 1e-5, (name, out[f"{name}_loss0"])
    assert out["chains"] < 1e-4, out["chains"]
    assert out["chains_state_devices"] == [2], "the ensemble's state was not spread over both devices"
    assert out["chains_sample"] == [3, 2]
    assert out["resume_bitwise"], out["resume"]
    assert out["resume_on_one"] < 1e-4, out["resume_on_one"]
    errors = out["errors"]
    assert any("JAX sees 2" in e for e in errors) and any("does not split" in e for e in errors)
    assert any("chains=3 do not spread over 2 devices" in e and "chains=4" in e for e in errors), errors
    assert any("NUTS draws with the PPL's own sampler" in e for e in errors), errors


def test_devices_on_a_pyro_program_is_refused(moons) -> None:
    from gmppl.models import zoo

    with pytest.raises(gm.DeviceError, match="NumPyro"):
        gm.fit(zoo.ppca(2, 1, engine="pyro"), moons, steps=1, devices=2, progress=False)
