"""``devices=N`` on NumPyro programs: each batch split over a device mesh gives the one-device fit up to reduction
order (2 forced host devices in a subprocess); bad device requests are refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gmppl as gm

HERE = Path(__file__).parent


def test_two_devices_give_the_one_device_fit() -> None:
    """Adam steps on 1 and on 2 devices: the same parameters up to float32 reassociation of the batch mean
    (relative 1e-3: the difference is rounding, amplified by the optimiser's steps; 100 steps for one objective
    (Likelihood, ELBO; 50 for Score's denoising loss), 10 for the adversarial game, whose feedback amplifies it faster). The noise is the same draw on both
    layouts (step 0's ELBO and GAN losses agree to float32 rounding). An ensemble (``chains=2``) spreads one
    chain per device and equals the one-device ensemble (relative 1e-4); its sharded state checkpoints and
    resumes bitwise on 2 devices and to rounding on 1. Bad requests are refused before training.
    20 s with JAX's compilation cache warm on 2 idle cores, up to 75 s cold or with the cores shared."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    run = subprocess.run(
        [sys.executable, str(HERE / "devices_job.py")], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2
    for name in ("likelihood", "elbo", "adversarial", "score"):
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


@pytest.mark.slow  # about 60 s: two processes each compile the fit
def test_a_fit_across_two_processes_gives_the_one_process_fit(tmp_path: Path) -> None:
    """Two processes joined by ``jax.distributed.initialize`` (one CPU device each, as two hosts would be) fit with
    ``devices=jax.devices()``: one chain splits its batch over them, two chains take one each. Both processes end
    with the same parameters, the one-process fit's up to reduction order; only process 0 writes checkpoints and
    saves. About 60 s on 2 shared cores (three processes each importing JAX and compiling)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    env.pop("XLA_FLAGS", None)
    job = [sys.executable, str(HERE / "multihost_job.py")]
    procs = [
        subprocess.Popen([*job, str(i), port, str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True)
        for i in (0, 1, -1)
    ]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    one, zero, ref = (json.loads((tmp_path / f"params{i}.json").read_text()) for i in (1, 0, -1))
    assert (zero["devices"], zero["local"], ref["devices"]) == (2, 1, 1)
    for name in ("batch", "chains"):
        assert one[name] == zero[name], f"{name}: the processes disagree"
        for k, v in ref[name].items():
            np.testing.assert_allclose(zero[name][k], v, rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")
        assert zero[f"{name}_sample"] == [4, 2]
        assert sorted(p.name for p in (tmp_path / "p0" / f"ck-{name}").iterdir()) == [
            "step-000000030",
            "step-000000060",
        ]
        assert (tmp_path / "p0" / f"saved-{name}" / "weights.safetensors").is_file()
    assert not (tmp_path / "p1").exists() or not any(p.is_file() for p in (tmp_path / "p1").rglob("*"))


def test_devices_on_a_pyro_program_is_refused(moons) -> None:
    from gmppl.models import zoo

    with pytest.raises(gm.DeviceError, match="NumPyro"):
        gm.fit(zoo.ppca(2, 1, engine="pyro"), moons, steps=1, devices=2, progress=False)
