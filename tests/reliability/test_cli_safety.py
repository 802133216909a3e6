"""The CLI checks where it will write before training, and never runs code a run directory names."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import gmppl
from gmppl.cli import app

runner = CliRunner()
MODEL = textwrap.dedent(
    """
    import pyro, pyro.distributions as dist, torch

    def gauss(x=None, n=None):
        mu = pyro.param("mu", torch.zeros(2))
        s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
        n = x.shape[0] if x is not None else n
        with pyro.plate("data", n):
            pyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)
    """
)
EVIL = textwrap.dedent(
    """
    from pathlib import Path
    Path({marker!r}).write_text("imported")

    def gauss(x=None, n=None):
        raise SystemExit("never called")
    """
)


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "m.py").write_text(MODEL)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32))
    return tmp_path


@pytest.fixture
def no_training(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(gmppl, "fit", boom)


def _fit(tmp: Path, out: Path, *extra: str):
    args = ["fit", f"{tmp}/m.py:gauss", "--data", str(tmp / "d.npy"), "--steps", "3", "--out", str(out), *extra]
    return runner.invoke(app, args)


def test_out_that_is_an_existing_file_fails_before_training(setup, no_training):
    (setup / "taken").write_text("precious")
    res = _fit(setup, setup / "taken")
    assert res.exit_code == 2 and "existing file" in res.output, res.output
    assert (setup / "taken").read_text() == "precious"


def test_out_under_a_file_fails_before_training(setup, no_training):
    (setup / "taken").write_text("precious")
    res = _fit(setup, setup / "taken" / "run")
    assert res.exit_code == 2 and "is a file" in res.output, res.output


def test_out_in_an_unwritable_directory_fails_before_training(setup, no_training):
    locked = setup / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        target = locked / "run"
        if os.access(locked, os.W_OK):  # root writes anywhere: use a directory no one can write
            if not Path("/sys").is_dir():
                pytest.skip("no unwritable directory to test with")
            target = Path("/sys/gmppl-test-run")
        res = _fit(setup, target)
    finally:
        locked.chmod(stat.S_IRWXU)
    assert res.exit_code == 2 and "not writable" in res.output, res.output


def test_out_that_is_a_directory_of_other_files_fails_before_training(setup, no_training):
    (setup / "mine").mkdir()
    (setup / "mine" / "notes.txt").write_text("precious")
    res = _fit(setup, setup / "mine")
    assert res.exit_code == 2 and "not a saved gmppl fit" in res.output, res.output
    assert (setup / "mine" / "notes.txt").read_text() == "precious"


def test_fit_records_the_model_hash_and_sample_refuses_a_changed_file(setup):
    out = setup / "run"
    res = _fit(setup, out)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "meta.json").read_text())["config"]
    assert cfg["model_path"] == str((setup / "m.py").resolve()) and len(cfg["model_sha256"]) == 64
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert {"datatree.nc", "test_data.npy"} <= set(manifest)  # the CLI's files are saved with the fit
    res = runner.invoke(app, ["sample", str(out), "-n", "3", "--out", str(setup / "s.npy")])
    assert res.exit_code == 0, res.output
    assert np.load(setup / "s.npy").shape == (3, 2)
    marker = setup / "marker"
    (setup / "m.py").write_text(EVIL.format(marker=str(marker)))
    for cmd in (["sample", str(out), "-n", "3", "--out", str(setup / "s2.npy")], ["report", str(out)]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and "has changed" in res.output and "--model" in res.output, res.output
        assert not marker.exists()
    (setup / "m2.py").write_text(MODEL)  # the user names the program: it is used
    res = runner.invoke(
        app, ["sample", str(out), "-n", "3", "--model", f"{setup}/m2.py:gauss", "--out", str(setup / "s3.npy")]
    )
    assert res.exit_code == 0, res.output


def _planted_run(tmp: Path, model_file: Path, *, digest: str | None) -> Path:
    """A run directory someone else wrote: its meta.json names a .py file (format 1, so no manifest needed)."""
    run = tmp / "run"
    run.mkdir(exist_ok=True)
    config = {"model_spec": f"{model_file}:gauss", "model_path": str(model_file)}
    if digest is not None:
        config["model_sha256"] = digest
    (run / "meta.json").write_text(json.dumps({"format": 1, "config": config}))
    (run / "weights.safetensors").write_bytes(b"")
    return run


@pytest.mark.parametrize("cmd", ["sample", "report"])
def test_run_naming_a_file_without_a_hash_is_refused_and_never_imported(setup, cmd):
    marker = setup / "marker"
    evil = setup / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    run = _planted_run(setup, evil, digest=None)
    res = runner.invoke(app, [cmd, str(run)] + (["-n", "3", "--out", str(setup / "s.npy")] if cmd == "sample" else []))
    assert res.exit_code == 2 and "no SHA-256" in res.output and "--model" in res.output, res.output
    assert not marker.exists()


def test_run_shipping_its_own_program_with_a_matching_hash_is_refused(setup):
    from gmppl._files import sha256_file

    marker = setup / "marker"
    run = setup / "run"
    run.mkdir()
    evil = run / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    _planted_run(setup, evil, digest=sha256_file(evil))
    res = runner.invoke(app, ["sample", str(run), "-n", "3", "--out", str(setup / "s.npy")])
    assert res.exit_code == 2 and "inside the run directory" in res.output, res.output
    assert not marker.exists()


def test_sample_out_that_is_a_directory_fails_before_loading(setup):
    (setup / "s.npy").mkdir()
    res = runner.invoke(app, ["sample", str(setup / "nowhere"), "-n", "3", "--out", str(setup / "s.npy")])
    assert res.exit_code == 2 and "is a directory" in res.output, res.output
