"""Checkpoints: a resumed fit is bitwise the uninterrupted one on CPU (every backend that optimises, both engines),
a killed process resumes, and checkpoints of another fit, corrupt ones and bad settings are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gmppl as gm
from gmppl.errors import BackendError, CheckpointError
from gmppl.models import zoo

HERE = Path(__file__).parent
ENGINES = ["pyro", "numpyro"]


def gauss(engine: str):
    from test_fit import numpyro_gauss, pyro_gauss

    return pyro_gauss() if engine == "pyro" else numpyro_gauss()


def vae(engine: str):
    return zoo.vae(2, latent_dim=2, engine=engine)


def gan(engine: str):
    return zoo.gan(2, latent_dim=2, engine=engine)


def diffusion(engine: str):
    return zoo.diffusion(2, width=16, depth=2, engine=engine)


CASES = {
    "likelihood": (gauss, lambda: gm.inference.Likelihood()),
    "elbo": (vae, lambda: gm.inference.ELBO()),
    "adversarial": (gan, lambda: gm.inference.Adversarial("js", critic_steps=2)),  # two optimisers and an EMA
    "score": (diffusion, lambda: gm.inference.Score()),  # DSM with the EMA of the score network (the default)
}


def _params(fit) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in fit.params.items()}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_is_bitwise_the_uninterrupted_fit(case: str, engine: str, moons: np.ndarray, tmp_path: Path) -> None:
    """60 steps in one go, against 25 steps (checkpoints at 10, 20 and the end, 25) then a resume to 60: the same
    parameters and history, bit for bit (the random stream of each step does not depend on where the fit was
    cut, and the checkpoint holds every state the next step reads)."""
    make, backend = CASES[case]
    kw = dict(steps=60, batch_size=64, seed=3, progress=False)
    whole = gm.fit(make(engine), moons, backend(), **kw)
    d = tmp_path / "ck"
    part = gm.fit(make(engine), moons, backend(), **{**kw, "steps": 25}, checkpoint=d, checkpoint_every=10)
    assert len(part.history["loss"]) == 25
    again = gm.fit(make(engine), moons, backend(), **kw, checkpoint=d, checkpoint_every=10, resume=True)
    for name, value in _params(whole).items():
        np.testing.assert_array_equal(_params(again)[name], value, err_msg=name)
    np.testing.assert_array_equal(again.history["loss"], whole.history["loss"])


def test_a_killed_process_resumes(moons: np.ndarray, tmp_path: Path) -> None:
    """SIGKILL a fitting process once it has written a checkpoint (possibly mid-write of the next), then resume:
    the result equals the uninterrupted fit."""
    from checkpoint_job import STEPS, run

    d = tmp_path / "ck"
    script = HERE / "checkpoint_job.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    proc = subprocess.Popen([sys.executable, str(script), str(d)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(d.glob("step-*/meta.json")):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = max(int(p.name[5:]) for p in d.glob("step-*") if (p / "meta.json").is_file())
    assert 0 < done < STEPS
    resumed = run(d, STEPS, resume=True)
    whole = run(None, STEPS)
    for name, value in _params(whole).items():
        np.testing.assert_array_equal(_params(resumed)[name], value, err_msg=name)


def test_checkpoints_of_another_fit_and_corrupt_ones_are_refused(moons: np.ndarray, tmp_path: Path) -> None:
    d = tmp_path / "ck"
    kw = dict(steps=20, batch_size=64, progress=False, checkpoint=d, checkpoint_every=10)
    gm.fit(gauss("pyro"), moons, **kw)
    with pytest.raises(CheckpointError, match="resume=True"):
        gm.fit(gauss("pyro"), moons, **kw)  # would overwrite them
    with pytest.raises(CheckpointError, match="seed"):
        gm.fit(gauss("pyro"), moons, **kw, seed=1, resume=True)
    with pytest.raises(CheckpointError, match="data"):
        gm.fit(gauss("pyro"), moons[:100], **kw, resume=True)
    state = sorted(d.glob("step-*"))[-1] / "state.safetensors"
    raw = bytearray(state.read_bytes())
    raw[-3] ^= 0xFF
    state.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        gm.fit(gauss("pyro"), moons, **{**kw, "steps": 30}, resume=True)


def test_bad_checkpoint_settings_are_refused_before_training(moons: np.ndarray, tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("")
    with pytest.raises(CheckpointError, match="is a file"):
        gm.fit(gauss("pyro"), moons, steps=5, checkpoint=f, progress=False)
    with pytest.raises(BackendError, match="checkpoint=DIR"):
        gm.fit(gauss("pyro"), moons, steps=5, resume=True, progress=False)
    with pytest.raises(BackendError, match="checkpoint_every"):
        gm.fit(gauss("pyro"), moons, steps=5, checkpoint=tmp_path / "d", checkpoint_every=0, progress=False)


def test_only_jax_process_0_writes(moons: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across hosts (``jax.distributed.initialize()``) every process holds the same NumPyro fit: only process 0 writes
    its checkpoints and saves it; the others write nothing."""
    import jax

    d = tmp_path / "ck"
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    fit = gm.fit(gauss("numpyro"), moons, steps=20, progress=False, checkpoint=d, checkpoint_every=5)
    fit.save(tmp_path / "saved")
    assert list(d.iterdir()) == [] and not (tmp_path / "saved").exists()
    monkeypatch.setattr(jax, "process_index", lambda *a: 0)
    fit.save(tmp_path / "saved")
    gm.fit(gauss("numpyro"), moons, steps=20, progress=False, checkpoint=d, checkpoint_every=5)
    assert [p.name for p in sorted(d.iterdir())] == ["step-000000015", "step-000000020"]
    assert (tmp_path / "saved" / "weights.safetensors").is_file()


def test_resume_with_no_checkpoint_starts_afresh_and_resume_at_the_end_returns_the_fit(
    moons: np.ndarray, tmp_path: Path
) -> None:
    d = tmp_path / "ck"
    a = gm.fit(gauss("numpyro"), moons, steps=20, progress=False, checkpoint=d, resume=True)
    b = gm.fit(gauss("numpyro"), moons, steps=20, progress=False, checkpoint=d, resume=True)
    np.testing.assert_array_equal(a.params["mu"], b.params["mu"])
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])


@pytest.mark.parametrize("engine", ENGINES)
def test_ctrl_c_returns_the_fit_so_far(engine: str, moons: np.ndarray) -> None:
    def interrupt(step: int, metrics: dict) -> None:
        if step >= 200:
            raise KeyboardInterrupt

    fit = gm.fit(gauss(engine), moons, steps=1000, callbacks=[interrupt], progress=False)
    assert fit.config["interrupted"] and len(fit.history["loss"]) == 200
    assert np.isfinite(np.asarray(fit.log_prob(moons[:5]))).all()


CLI_MODEL = """
import pyro, pyro.distributions as dist, torch

def gauss(x=None, n=None):
    mu = pyro.param("mu", torch.zeros(2))
    s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0] if x is not None else n):
        pyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)
"""


def _cli(tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [
        "fit",
        f"{tmp_path}/m.py:gauss",
        "--data",
        str(tmp_path / "d.npy"),
        "--steps",
        "3000",
        "--batch-size",
        "64",
        "--out",
        str(tmp_path / out),
        *extra,
    ]


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "weights.safetensors"))


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_the_cli_resumes_a_killed_or_interrupted_fit(sig: str, tmp_path: Path) -> None:
    """`gmppl fit --checkpoint DIR` killed (SIGKILL: nothing saved but the checkpoints) or interrupted (Ctrl-C: it
    stops between steps, writes a checkpoint there and saves the fit so far), then the same command with
    --resume: the saved fit is bitwise the uninterrupted command's."""
    from typer.testing import CliRunner

    from gmppl.cli import app

    (tmp_path / "m.py").write_text(CLI_MODEL)
    np.save(tmp_path / "d.npy", gm.datasets.moons(512))
    ck = ["--checkpoint", str(tmp_path / "ck"), "--checkpoint-every", "50"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "gmppl.cli", *_cli(tmp_path, "run", *ck)], env=env, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any((tmp_path / "ck").glob("step-*/meta.json")):
            time.sleep(0.1)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=120)
    finally:
        proc.kill()
    done = max(int(p.name[5:]) for p in (tmp_path / "ck").glob("step-*") if (p / "meta.json").is_file())
    assert 0 < done < 3000
    if sig == "SIGINT":
        assert proc.returncode == 0
        part = gm.load(tmp_path / "run", _gauss_program(tmp_path))
        assert part.config["interrupted"] and len(part.history["loss"]) == done  # the checkpoint is where it stopped
    else:
        assert proc.returncode == -signal.SIGKILL and not (tmp_path / "run").exists()
    runner = CliRunner()
    res = runner.invoke(app, _cli(tmp_path, "run", *ck, "--resume"))
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, _cli(tmp_path, "whole"))
    assert res.exit_code == 0, res.output
    resumed, whole = _weights(tmp_path / "run"), _weights(tmp_path / "whole")
    assert resumed.keys() == whole.keys()
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def _gauss_program(tmp_path: Path):
    from gmppl.cli import load_model

    return load_model(f"{tmp_path}/m.py:gauss")
