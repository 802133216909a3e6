"""The saved-fit format: safetensors weights + JSON metadata + npz history; nothing executes on load.

``save(fit, path)`` writes a fit (``Fit.save``); ``read(path, model)`` returns the fields from which
``gm.load`` (``gmppl.result.load``) rebuilds the ``Fit``, so this module never imports ``gmppl.result``.

A saved fit is a directory::

    meta.json            engine, backend and its settings, sites, shapes, versions, seed
    weights.safetensors  every parameter, keyed ``chain{c}/{name}`` (pytrees flattened by key path)
    history.npz          per-step training metrics (``np.load(allow_pickle=False)``)
    observed_data.npy    the training data (``allow_pickle=False``)
    constant_data.npz    the training data's inputs, if any (``allow_pickle=False``)
    manifest.json        the SHA-256 of every other file, and of its own list

Saving is atomic and verified (`write_atomic`): the files go into a temporary sibling directory
``.{name}.tmp-{pid}-{token}``, are fsynced, hashed into ``manifest.json``, and the directory is renamed onto
the target; an existing fit there is first renamed aside (``.{name}.old-...``) and removed once the new one
is in place. A save interrupted at any point leaves the old fit or the new one complete at ``path`` (or, in
the instant between the two renames, the old one aside, which the next save or load puts back); stale
temporaries of killed saves are removed by the next save. ``read`` checks every file against the manifest
before using any of them, so a flipped bit is reported as ``<file> is corrupt (checksum mismatch)``.
Saving refuses an existing file, or a non-empty directory that is not a saved fit (it would be replaced).
Fits saved before the manifest (format 1) still load, unverified.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl._files import fsync, sha256_file
from gmppl.errors import CheckpointError

FORMAT = 2  # 2: with manifest.json; 1 (no manifest) is still read
_READS = (1, 2)
MANIFEST = "manifest.json"
_UNSAFE = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib")


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("gmppl", "torch", "pyro-ppl", "jax", "numpyro", "arviz"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return out


def flatten_params(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Parameters (tensors, or pytrees of arrays) as a flat ``{name: numpy array}``."""
    import jax

    flat = {}
    for name, value in params.items():
        if hasattr(value, "detach") or isinstance(value, np.ndarray) or hasattr(value, "shape"):
            flat[name] = np.array(to_numpy(value), order="C")
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            flat[name + jax.tree_util.keystr(path)] = np.array(leaf, order="C")
    return flat


def unflatten_like(template: dict[str, Any], flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of `flatten_params` onto the structure of ``template`` (shapes checked)."""
    import jax

    out = {}
    for name, value in template.items():
        if hasattr(value, "detach") or hasattr(value, "shape"):
            _check(name, flat, np.shape(to_numpy(value)))
            out[name] = flat[name]
            continue
        leaves, treedef = jax.tree_util.tree_flatten_with_path(value)
        new = []
        for path, leaf in leaves:
            key = name + jax.tree_util.keystr(path)
            _check(key, flat, np.shape(leaf))
            new.append(flat[key])
        out[name] = jax.tree_util.tree_unflatten(treedef, new)
    return out


def _check(key: str, flat: dict, shape: tuple) -> None:
    if key not in flat:
        raise CheckpointError(f"the saved fit has no parameter {key!r}: it is from another model.")
    if tuple(flat[key].shape) != tuple(shape):
        raise CheckpointError(
            f"parameter {key!r} has shape {flat[key].shape} in the file but {shape} in this "
            "model: the checkpoint is from another model."
        )


def backend_config(backend: Any) -> dict[str, Any]:
    """The backend's settings that JSON can hold (strings, numbers, divergence names)."""
    cfg: dict[str, Any] = {}
    if dataclasses.is_dataclass(backend):
        for f in dataclasses.fields(backend):
            v = getattr(backend, f.name)
            if v is None or isinstance(v, str | int | float | bool):
                cfg[f.name] = v
            elif isinstance(v, tuple | list) and all(isinstance(e, str | int | float) for e in v):
                cfg[f.name] = list(v)
            elif hasattr(v, "name") and isinstance(v.name, str):
                cfg[f.name] = v.name
    return cfg


def save(fit: Any, path: Any, *, extra: Callable[[Path], None] | None = None) -> None:
    """Write ``fit`` to the directory ``path`` atomically (see the module docstring); ``extra(dir)`` may write
    more files into the new directory before it is hashed and put in place (the CLI's test data, DataTree).
    Under torchrun only rank 0 writes (every rank holds the same fit), across JAX hosts only process 0."""
    from gmppl.engines.distributed import is_writer

    if not is_writer(getattr(fit, "engine", None)):
        return

    def write(out: Path) -> None:
        _write_fit(fit, out)
        if extra is not None:
            extra(out)

    write_atomic(path, write)


def _write_fit(fit: Any, out: Path) -> None:
    from safetensors.numpy import save_file

    tensors, shapes = {}, []
    for c, program in enumerate(fit.programs):
        flat = flatten_params(program.state_dict())
        shapes.append({k: list(v.shape) for k, v in flat.items()})
        tensors.update({f"chain{c}/{k}": v for k, v in flat.items()})
    save_file(tensors, str(out / "weights.safetensors"))
    draws = fit.draws  # posterior draws (NUTS, Bayesian SVI)
    if draws is not None:
        arrays = {}
        for c, d in enumerate(draws):
            arrays.update({f"chain{c}/{k}": np.ascontiguousarray(v) for k, v in d.values.items()})
            # a guide's draws also carry log p(x, theta_s) and log q(theta_s) (ArviZ's approximate_posterior)
            arrays.update({f"chain{c}/{k}": np.ascontiguousarray(v) for k, v in _draw_weights(d).items()})
        save_file(arrays, str(out / "draws.safetensors"))
    # Any, not ndarray: numpy's stub lets ``**`` fill savez's ``allow_pickle: bool`` too (no key here is that)
    hist: dict[str, Any] = {f"chain{c}/{k}": np.asarray(v) for c, h in enumerate(fit._histories) for k, v in h.items()}
    np.savez(out / "history.npz", **hist)
    if fit.data is not None:
        np.save(out / "observed_data.npy", fit.data, allow_pickle=False)
    if fit.inputs:
        inputs: dict[str, Any] = {k: np.asarray(v) for k, v in fit.inputs.items()}
        np.savez(out / "constant_data.npz", **inputs)
    meta = {
        "format": FORMAT,
        "engine": fit.engine,
        "backend": {"class": type(fit.backend).__name__, "config": backend_config(fit.backend)},
        "observed": fit.info.observed,
        "latent": fit.config.get("latent", "z"),
        "x_event_shape": list(fit.info.x_event_shape),
        "chains": fit.chains,
        "params": shapes,
        "draws_local": sorted(draws[0].local) if draws is not None else None,
        "config": {k: v for k, v in fit.config.items() if isinstance(v, str | int | float | bool | list | None)},
        "versions": _versions(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


#: Keys of a guide's per-draw log-densities in ``draws.safetensors``, after ``chain{c}/``: the leading
#: ``/`` keeps them apart from site names (``g/weight``), which do not start with one.
_DRAW_WEIGHTS = {"log_p": "/log_p", "log_q": "/log_q"}


def _draw_weights(draws: Any) -> dict[str, np.ndarray]:
    return {name: getattr(draws, k) for k, name in _DRAW_WEIGHTS.items() if getattr(draws, k) is not None}


def read(path: Any, model: Callable, backend: Any = None, *, device: Any = None) -> dict[str, Any]:
    """The fields of a ``Fit`` saved by ``save`` for the same ``model``; weights load without running code.

    ``gm.load`` (``gmppl.result.load``) builds the ``Fit`` from them. Refuses (``gm.CheckpointError``) a
    directory that is corrupt, holds only pickles, or whose parameters do not match ``model``'s.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from gmppl.engines import make_program
    from gmppl.inference.base import REGISTRY

    src = Path(path)
    _recover(src)
    if not (src / MANIFEST).is_file() and not (
        (src / "meta.json").is_file() and (src / "weights.safetensors").is_file()
    ):
        unsafe = sorted(p.name for p in src.glob("*") if p.suffix in _UNSAFE) if src.is_dir() else []
        why = f" It holds {unsafe}: pickled checkpoints can run code and are never loaded." if unsafe else ""
        raise CheckpointError(f"{src} is not a saved gmppl fit (meta.json and weights.safetensors).{why}")
    meta = verify(src)
    try:
        flat = load_file(str(src / "weights.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{src}: weights.safetensors is corrupt ({type(e).__name__}: {e}).") from e
    if backend is None:
        cls = REGISTRY.get(meta["backend"]["class"])
        if cls is None:
            raise CheckpointError(f"{src}: unknown backend {meta['backend']['class']!r}.")
        try:
            backend = cls(**meta["backend"]["config"])
        except TypeError as e:
            raise CheckpointError(f"{src}: cannot rebuild the backend; pass backend= to gm.load ({e}).") from e
    data = np.load(src / "observed_data.npy", allow_pickle=False) if (src / "observed_data.npy").exists() else None
    inputs: dict[str, np.ndarray] = {}
    if (src / "constant_data.npz").exists():
        with np.load(src / "constant_data.npz", allow_pickle=False) as saved_inputs:
            inputs = {k: saved_inputs[k] for k in saved_inputs.files}
    shape = tuple(meta["x_event_shape"])
    example = data[:8] if data is not None else np.zeros((2, *shape), np.float32)
    example_inputs = {k: v[: len(example)] for k, v in inputs.items()}

    from gmppl.engines import check_signature

    call = check_signature(model, meta["observed"], tuple(inputs))
    programs, plans, all_draws, info = [], [], [], None
    for c in range(meta["chains"]):
        program = make_program(
            meta["engine"], model, observed=meta["observed"], latent=meta["latent"], device=device, call=call
        )
        info = program.inspect(example, example_inputs)
        if tuple(info.x_event_shape) != shape:
            raise CheckpointError(f"{src}: saved for examples of shape {shape}, this model's are {info.x_event_shape}.")
        plans.append(backend.prepare(program, info, example, seed=c, inputs=example_inputs))
        prefix = f"chain{c}/"
        mine = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        template = program.state_dict()
        extra = set(mine) - set(flatten_params(template))
        if extra:
            raise CheckpointError(f"{src}: parameters {sorted(extra)[:5]} are not in this model: another model's fit.")
        program.load_state_dict(unflatten_like(template, mine))
        if meta.get("draws_local") is not None:
            from gmppl.inference.draws import Draws

            try:
                saved = load_file(str(src / "draws.safetensors"))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{src}: the posterior draws are missing or corrupt ({e}).") from e
            values = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
            log_p, log_q = (values.pop(_DRAW_WEIGHTS[k], None) for k in ("log_p", "log_q"))
            local = frozenset(meta["draws_local"])
            all_draws.append(Draws(values=values, local=local, x=data, log_p=log_p, log_q=log_q))
        programs.append(program)
    with np.load(src / "history.npz", allow_pickle=False) as h:
        histories = [
            {k.split("/", 1)[1]: h[k] for k in h.files if k.startswith(f"chain{c}/")} for c in range(meta["chains"])
        ]
    return {
        "engine": meta["engine"],
        "backend": backend,
        "programs": programs,
        "plans": plans,
        "info": info,
        "histories": histories,
        "data": data,
        "inputs": inputs,
        "config": meta.get("config", {}),
        "draws": all_draws or None,
    }


# ---------------------------------------------------------------------------------------------- atomic writes
#: Temporaries of saves in progress in this process (a same-pid temporary not listed here is stale).
_ACTIVE: set[Path] = set()


def _files_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _is_fit(path: Path) -> bool:
    return (path / "meta.json").is_file() or (path / MANIFEST).is_file()


def check_output(path: Any) -> Path:
    """Check that a fit can be saved at ``path`` (a new or empty directory, or a previous saved fit, in a
    writable place) and return it as a ``Path``; raise ``CheckpointError`` saying why not. Writes nothing that
    stays: the one probe is a temporary directory, removed at once."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"cannot save to {out}: it is an existing file, not a directory; choose another path.")
    if out.is_dir() and not _is_fit(out) and any(out.iterdir()):
        raise CheckpointError(
            f"cannot save to {out}: it is a non-empty directory that is not a saved gmppl fit, and saving replaces "
            "the whole directory; choose a new or empty directory."
        )
    parent = out.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"cannot save to {out}: {existing} is a file, so no directory can be made under it.")
    try:
        os.rmdir(_mkdtemp(existing, ".gmppl-probe-"))
    except OSError as e:
        raise CheckpointError(
            f"cannot save to {out}: {existing} is not writable ({e.strerror or e}); choose a directory you can write."
        ) from e
    return out


def _mkdtemp(parent: Path, prefix: str) -> Path:
    path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _siblings(target: Path, kind: str) -> list[Path]:
    parent = target.absolute().parent
    return sorted(parent.glob(f".{glob.escape(target.name)}.{kind}-*")) if parent.is_dir() else []


def _stale(path: Path) -> bool:
    """Whether a temporary was left by a save that is no longer running (its process is gone)."""
    try:
        pid = int(path.name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return True
    if pid == os.getpid():
        return path.absolute() not in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _recover(target: Path) -> None:
    """Undo a save killed between its two renames: the previous fit, renamed aside, goes back to ``target``."""
    if target.exists():
        return
    olds = [p for p in _siblings(target, "old") if _stale(p) and _is_fit(p)]
    if olds:
        os.rename(max(olds, key=lambda p: p.stat().st_mtime), target)


def write_atomic(path: Any, write: Callable[[Path], None]) -> None:
    """Run ``write(dir)`` on a fresh temporary sibling of ``path``, then make it ``path`` atomically.

    Every file ``write`` leaves is fsynced and hashed into ``manifest.json`` (which `verify` checks), the
    directory is renamed onto ``path`` (a previous fit there is renamed aside first and removed after), and the
    parent directory is fsynced. If ``write`` raises, or the process dies, ``path`` still holds what it held.
    """
    target = Path(os.path.abspath(check_output(path)))
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    for stale in _siblings(target, "tmp") + _siblings(target, "old"):
        if _stale(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = _mkdtemp(parent, f".{target.name}.tmp-")
    _ACTIVE.add(tmp)
    try:
        write(tmp)
        files = {}
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            fsync(f)
            files[f.relative_to(tmp).as_posix()] = sha256_file(f)
        files.pop(MANIFEST, None)
        manifest = {"format": FORMAT, "files": files, "sha256": _files_digest(files)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        fsync(tmp / MANIFEST)
        fsync(tmp)
        if target.exists():
            aside = parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            _ACTIVE.add(aside)
            try:
                os.rename(target, aside)
                os.rename(tmp, target)
                fsync(parent)
                shutil.rmtree(aside, ignore_errors=True)
            finally:
                _ACTIVE.discard(aside)
        else:
            os.rename(tmp, target)
            fsync(parent)
    finally:
        _ACTIVE.discard(tmp)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify(src: Any) -> dict[str, Any]:
    """Check every file of a saved fit against its ``manifest.json`` and return its parsed ``meta.json``.

    Raises ``CheckpointError`` naming the first file that is missing or whose SHA-256 differs. A fit saved
    before manifests (format 1) is read unverified.
    """
    src = Path(src)
    manifest_path = src / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            ok = isinstance(files, dict) and manifest["sha256"] == _files_digest(files)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{src}: {MANIFEST} is corrupt ({type(e).__name__}: {e}).") from e
        if not ok:
            raise CheckpointError(f"{src}: {MANIFEST} is corrupt (checksum mismatch).")
        for name, digest in files.items():
            f = src / name
            if not f.is_file():
                raise CheckpointError(f"{src}: {name} is missing (the manifest lists it); the saved fit is incomplete.")
            if sha256_file(f) != digest:
                raise CheckpointError(
                    f"{src}: {name} is corrupt (checksum mismatch); the file changed after it was saved."
                )
    try:
        meta = json.loads((src / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, OSError) as e:
        raise CheckpointError(f"{src}: meta.json is corrupt ({type(e).__name__}: {e}).") from e
    fmt = meta.get("format")
    if fmt not in _READS:
        raise CheckpointError(f"{src}: unknown format {fmt!r} (this gmppl reads {list(_READS)}).")
    if fmt >= 2 and not manifest_path.is_file():
        raise CheckpointError(f"{src}: {MANIFEST} is missing, so the saved fit cannot be verified.")
    return meta
