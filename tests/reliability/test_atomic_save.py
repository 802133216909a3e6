"""Saved fits are written atomically and verified on load: nothing saved is lost or silently wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import gmppl as gm
import gmppl.io as gio

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32) + 3.0


def gauss(x=None, n=None):
    import pyro
    import pyro.distributions as dist
    import torch

    mu = pyro.param("mu", torch.zeros(2))
    s = pyro.param("s", torch.ones(2), constraint=dist.constraints.positive)
    n = x.shape[0] if x is not None else n
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(mu, s).to_event(1), obs=x)


def _fit(steps: int) -> gm.Fit:
    return gm.fit(gauss, X, gm.inference.Likelihood(), steps=steps, batch_size=64, optim=0.1, progress=False)


@pytest.fixture(scope="module")
def fits() -> tuple[gm.Fit, gm.Fit]:
    return _fit(2), _fit(30)


def _same(fit: gm.Fit, ref: gm.Fit) -> bool:
    return all(np.array_equal(fit.params[k], ref.params[k]) for k in ref.params)


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def test_save_twice_over_the_same_path(fits, tmp_path):
    old, new = fits
    assert not _same(old, new)
    out = tmp_path / "fit"
    old.save(out)
    new.save(out)
    assert _same(gm.load(out, gauss), new)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"meta.json", "weights.safetensors", "history.npz", "observed_data.npy"} <= set(manifest["files"])
    assert _leftovers(out) == []


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


FILES = ["meta.json", "weights.safetensors", "history.npz", "observed_data.npy", "manifest.json"]


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_in_any_file_is_reported_by_name(fits, tmp_path, name, where):
    out = tmp_path / "fit"
    fits[0].save(out)
    size = (out / name).stat().st_size
    _flip(out / name, {"start": 0, "middle": size // 2, "end": size - 1}[where])
    with pytest.raises(gm.CheckpointError, match=rf"{name} is corrupt") as e:
        gm.load(out, gauss)
    assert "another model" not in str(e.value)


@pytest.mark.parametrize("name", ["meta.json", "weights.safetensors", "history.npz", "manifest.json"])
def test_a_missing_file_is_reported_by_name(fits, tmp_path, name):
    out = tmp_path / "fit"
    fits[0].save(out)
    (out / name).unlink()
    with pytest.raises(gm.CheckpointError, match=rf"{name} is missing"):
        gm.load(out, gauss)


def test_interrupted_save_keeps_the_old_fit(fits, tmp_path, monkeypatch):
    old, new = fits
    out = tmp_path / "fit"
    old.save(out)

    def die(*args, **kwargs):  # history.npz comes after weights.safetensors: half the files are written
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(gio.np, "savez", die)
    with pytest.raises(KeyboardInterrupt):
        new.save(out)
    monkeypatch.undo()
    assert _same(gm.load(out, gauss), old)
    assert _leftovers(out) == []


def test_save_killed_between_its_two_renames_keeps_the_old_fit(fits, tmp_path, monkeypatch):
    old, new = fits
    out = tmp_path / "fit"
    old.save(out)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old fit is aside, the new one not yet in place
            raise KeyboardInterrupt("killed between the renames")
        real(src, dst)

    monkeypatch.setattr(gio.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        new.save(out)
    monkeypatch.undo()
    assert not out.exists()
    assert _same(gm.load(out, gauss), old)  # the previous fit is put back
    new.save(out)
    assert _same(gm.load(out, gauss), new) and _leftovers(out) == []


def test_a_temporary_left_by_a_killed_process_confuses_neither_load_nor_save(fits, tmp_path):
    old, new = fits
    out = tmp_path / "fit"
    old.save(out)
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import gmppl.io as gio

        def write(d: Path) -> None:
            (d / "meta.json").write_text('{{"format": 2')  # half a file
            (d / "weights.safetensors").write_bytes(b"half")
            os._exit(9)  # killed mid-save

        gio.write_atomic({str(out)!r}, write)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 9, res.stderr[-2000:]
    assert [n for n in _leftovers(out) if ".tmp-" in n], "the killed save left no temporary"
    assert _same(gm.load(out, gauss), old)
    new.save(out)
    assert _same(gm.load(out, gauss), new)
    assert _leftovers(out) == []


def test_save_refuses_a_file_or_a_foreign_directory(fits, tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(gm.CheckpointError, match="existing file"):
        fits[0].save(tmp_path / "file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("mine")
    with pytest.raises(gm.CheckpointError, match="not a saved gmppl fit"):
        fits[0].save(tmp_path / "notes")
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "notes" / "thesis.tex").read_text() == "mine"


def test_a_fit_saved_before_manifests_still_loads(fits, tmp_path):
    out = tmp_path / "fit"
    fits[1].save(out)
    (out / "manifest.json").unlink()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    assert _same(gm.load(out, gauss), fits[1])
