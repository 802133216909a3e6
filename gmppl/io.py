"""The saved-fit format: safetensors weights + JSON metadata + npz history; nothing executes on load.

``save(fit, path)`` writes a fit (``Fit.save``); ``read(path, model)`` returns the fields from which
``gm.load`` (``gmppl.result.load``) rebuilds the ``Fit``, so this module never imports ``gmppl.result``.

A saved fit is a directory::

    meta.json            engine, backend and its settings, sites, shapes, versions, seed
    weights.safetensors  every parameter, keyed ``chain{c}/{name}`` (pytrees flattened by key path)
    history.npz          per-step training metrics (``np.load(allow_pickle=False)``)
    observed_data.npy    the training data (``allow_pickle=False``)
    constant_data.npz    the training data's inputs, if any (``allow_pickle=False``)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gmppl._data import to_numpy
from gmppl.errors import CheckpointError

FORMAT = 1
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


def save(fit: Any, path: Any) -> None:
    from safetensors.numpy import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
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
    if not (src / "meta.json").is_file() or not (src / "weights.safetensors").is_file():
        unsafe = sorted(p.name for p in src.glob("*") if p.suffix in _UNSAFE) if src.is_dir() else []
        why = f" It holds {unsafe}: pickled checkpoints can run code and are never loaded." if unsafe else ""
        raise CheckpointError(f"{src} is not a saved gmppl fit (meta.json and weights.safetensors).{why}")
    try:
        meta = json.loads((src / "meta.json").read_text())
        flat = load_file(str(src / "weights.safetensors"))
    except (json.JSONDecodeError, SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{src}: the saved fit is corrupt ({type(e).__name__}: {e}).") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{src}: unknown format {meta.get('format')!r} (this gmppl reads {FORMAT}).")
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
