"""Checkpoints of a running fit: written atomically, verified on read, never unpickled.

A checkpoint directory holds ``step-<step>/`` subdirectories, each with ``state.safetensors`` (every
array the next step needs: parameters, optimiser states, averaged iterates, data order, random
states, the history so far) and ``meta.json`` (what is not an array, the fit's fingerprint, and the
SHA-256 of the arrays file). Each is written into a temporary sibling, flushed to disk and renamed
into place, so a kill at any moment leaves the last complete checkpoint; the newest ``KEEP`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gmppl._files import fsync, sha256_file
from gmppl.errors import CheckpointError

KEEP = 2
FORMAT = 1


def check_directory(path: Any) -> Path:
    """``path`` as a checkpoint directory that can be written (created if missing), before any training step."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"checkpoint={str(d)!r} is a file; pass a directory for the checkpoints.")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise CheckpointError(f"checkpoint={str(d)!r} cannot be written ({e}); choose a writable directory.") from e
    return d


def steps(path: Path) -> list[int]:
    """The steps of the complete checkpoints in ``path``, oldest first."""
    out = []
    for child in path.glob("step-*"):
        if child.is_dir() and (child / "meta.json").is_file() and child.name[5:].isdigit():
            out.append(int(child.name[5:]))
    return sorted(out)


def write(path: Path, step: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write the checkpoint of ``step`` atomically, then drop all but the newest ``KEEP``."""
    from safetensors.numpy import save_file

    final = path / f"step-{step:09d}"
    tmp = Path(tempfile.mkdtemp(dir=path, prefix=f".step-{step:09d}-"))
    try:
        state = tmp / "state.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(state))
        fsync(state)
        scalars = sorted(k for k, v in arrays.items() if np.ndim(v) == 0)  # safetensors stores them as (1,)
        body = {"format": FORMAT, "step": step, "sha256": sha256_file(state), "scalar_arrays": scalars, **meta}
        (tmp / "meta.json").write_text(json.dumps(body))
        fsync(tmp / "meta.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in steps(path)[:-KEEP]:
        shutil.rmtree(path / f"step-{old:09d}", ignore_errors=True)
    for stale in path.glob(".step-*"):  # a write that a kill interrupted
        shutil.rmtree(stale, ignore_errors=True)
    return final


def read(path: Path, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata of the checkpoint of ``step``, verified against its checksum."""
    from safetensors.numpy import load_file

    d = path / f"step-{step:09d}"
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{d}/meta.json is corrupt ({e}).") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d}: unknown checkpoint format {meta.get('format')!r}.")
    state = d / "state.safetensors"
    if not state.is_file() or sha256_file(state) != meta.get("sha256"):
        raise CheckpointError(f"{state} is corrupt (checksum mismatch); delete {d} to resume from an older one.")
    arrays = load_file(str(state))
    for k in meta.get("scalar_arrays", []):
        arrays[k] = arrays[k].reshape(())
    return arrays, meta


def fingerprint(data: np.ndarray, inputs: dict[str, np.ndarray], **settings: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the data (a hash), the inputs and the fit's settings."""
    h = hashlib.sha256(np.ascontiguousarray(data).tobytes())
    for k in sorted(inputs):
        h.update(k.encode())
        h.update(np.ascontiguousarray(inputs[k]).tobytes())
    return {"data": h.hexdigest(), "shape": list(data.shape), **settings}
