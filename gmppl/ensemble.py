"""Ensembles: re-draw network weights so that each chain of ``gm.fit(..., chains=C)`` starts afresh.

A network's parameters reach gmppl only as tensors (``pyro.module``, a ``PyroModule``'s
``nn.Parameter`` attributes, ``eqx_module``), so chain
``c > 0`` re-draws every weight of a registered module with PyTorch's and Equinox's default
rule for linear/conv layers, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (biases take the fan-in of
their layer's weight). Plain ``param`` sites keep the value the program gives them: their
starting point is the user's choice. Chains also differ in their minibatch and sampling seeds.

On the JAX engine every optimising backend trains all chains at once, ``jax.vmap`` over the
engine's ``lax.scan`` (compiled once); samplers (NUTS) run chain by chain.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _redraw(names_shapes: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    fan_in: dict[str, int] = {}
    for name, shape in names_shapes:
        if len(shape) >= 2:
            fan_in[name.rsplit("weight", 1)[0]] = int(np.prod(shape[1:]))
    out = {}
    for name, shape in names_shapes:
        prefix = name.rsplit("bias", 1)[0] if "bias" in name else name.rsplit("weight", 1)[0]
        fi = fan_in.get(prefix, int(np.prod(shape[1:])) if len(shape) >= 2 else max(shape[0] if shape else 1, 1))
        bound = 1.0 / np.sqrt(max(fi, 1))
        out[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return out


def reinitialise(program: Any, *, seed: int) -> None:
    """Re-draw the module weights of ``program`` (see module docstring), seeded by ``seed``."""
    rng = np.random.default_rng(seed)
    if program.engine == "pyro":
        import torch

        params = {k: v for k, v in program.params().items() if "$$$" in k or k in _pyro_module_params(program)}
        new = _redraw([(k, tuple(v.shape)) for k, v in params.items()], rng)
        with torch.no_grad(), program.scope():  # this chain's values, not the caller's module
            for k, v in params.items():
                v.copy_(torch.as_tensor(new[k], dtype=v.dtype))
        return
    import jax

    params = dict(program.params)
    for name, value in params.items():
        if not name.endswith("$params"):
            continue
        leaves, treedef = jax.tree_util.tree_flatten_with_path(value)
        keyed = [(jax.tree_util.keystr(p), tuple(np.shape(leaf))) for p, leaf in leaves]
        new = _redraw(keyed, rng)
        params[name] = jax.tree_util.tree_unflatten(
            treedef,
            [jax.numpy.asarray(new[k], dtype=leaf.dtype) for (k, _), (_, leaf) in zip(keyed, leaves, strict=True)],
        )
    program.params = jax.device_put(params, program.device)


def _pyro_module_params(program: Any) -> set[str]:
    """The model's ``PyroModule`` parameters: ``nn.Parameter`` leaves of unconstrained ``param`` sites
    in the model's own trace (a ``PyroModule`` registers them under its attribute path, without
    ``pyro.module``'s ``$$$``). A guide's ``PyroParam`` (``AutoNormal``'s locations) is not the model's."""
    import torch
    from torch.distributions import constraints

    names = [k for k, v in program.trace(x=None, n=2).nodes.items() if v["type"] == "param"]
    store = program.params()
    return {
        k
        for k in names
        if isinstance(store.get(k), torch.nn.Parameter)
        and program.store["constraints"].get(k, constraints.real) is constraints.real
    }
