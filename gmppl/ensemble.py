"""Ensembles: re-draw network weights so that each chain of ``gm.fit(..., chains=C)`` starts afresh.

A network's parameters reach gmppl only as tensors (``pyro.module``, a ``PyroModule``'s
``nn.Parameter`` attributes, ``eqx_module``), so chain
``c > 0`` re-draws every weight of a registered module with PyTorch's and Equinox's default
rule for linear/conv layers, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (biases take the fan-in of
their layer's weight). Plain ``param`` sites keep the value the program gives them: their
starting point is the user's choice. Chains also differ in their minibatch and sampling seeds.

On the JAX engine, backends with one pure objective (the base ``jax_init``: Likelihood, ELBO,
Score) train all chains at once, ``jax.vmap`` over the engine's ``lax.scan`` (compiled once);
backends with their own ``jax_init`` (Adversarial) and samplers (NUTS) run chain by chain.
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
        with torch.no_grad():
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


# ---------------------------------------------------------------------- JAX: all chains in one program
def can_vmap(backend: Any) -> bool:
    """Chains run vmapped when the backend trains through the base ``jax_init`` (one pure objective)."""
    from gmppl.inference.base import Backend

    return getattr(backend, "run", None) is None and type(backend).jax_init is Backend.jax_init


def run_chains_vmapped(
    programs: list,
    backend: Any,
    data: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seeds: list[int],
    optim: Any,
    callbacks: tuple,
    progress: Any,
) -> list[dict[str, np.ndarray]]:
    """Train C NumPyro programs of one model at once: ``jax.vmap`` over the chains of the engine's scan.

    Each chain draws the same random stream as ``JaxTrainer.run`` with its own seed, so the result
    equals the sequential ensemble (up to float reassociation), compiled once instead of C times.
    """
    import jax
    import jax.numpy as jnp

    from gmppl.engines.numpyro import JaxTrainer, _chunk_runner
    from gmppl.errors import TrainingError

    x = programs[0].as_array(data)
    n = x.shape[0]
    keys, states, step = [], [], None
    for program, seed in zip(programs, seeds, strict=True):
        key, k0 = jax.random.split(jax.random.PRNGKey(seed))
        state, step_c = backend.jax_init(program, x[: min(n, batch_size)], k0, optim)
        step = step or step_c  # the same pure function for every chain: chain 0's closure
        keys.append(key)
        states.append(state)
    state = jax.tree.map(lambda *a: jnp.stack(a), *states)
    key = jnp.stack(keys)
    chunk = min(JaxTrainer.chunk, steps)
    run_chunk = jax.jit(jax.vmap(_chunk_runner(step, batch_size, chunk), in_axes=((0, 0, 0), None, 0, None)))
    split = jax.vmap(jax.random.split)
    c = len(programs)
    perm, offset = jnp.tile(jnp.arange(n), (c, 1)), jnp.full((c,), n, jnp.int32)
    # a carry committed to the device, as the chunk's outputs are: the second chunk does not recompile
    device = programs[0].device
    state, perm, offset = jax.tree.map(
        lambda a: jax.device_put(a, device) if isinstance(a, jax.Array) else a, (state, perm, offset)
    )
    rows, done = [], 0
    while done < steps:
        pair = split(key)
        key, k = pair[:, 0], pair[:, 1]
        active = min(chunk, steps - done)
        (new_state, perm, offset), metrics = run_chunk((state, perm, offset), x, k, jnp.int32(active))
        metrics = {name: np.asarray(v)[:, :active] for name, v in metrics.items()}
        bad = ~np.isfinite(metrics["loss"])
        if bad.any():
            chain, first = (int(i[0]) for i in np.nonzero(bad))
            for i, program in enumerate(programs):
                program.params = jax.tree.map(lambda a, i=i: a[i], state["params"])
            raise TrainingError(
                f"chain {chain}: the loss became {metrics['loss'][chain, first]} at step {done + first}; parameters "
                f"were kept from step {done}. Lower the learning rate (optim=gm.optim.Adam(lr=...)) or check the model."
            )
        state = new_state
        rows.append(metrics)
        done += active
        progress.update(done, float(metrics["loss"][:, -1].mean()))
        for cb in callbacks:
            cb(done, {name: float(v[:, -1].mean()) for name, v in metrics.items()})
    fitted = backend.jax_params(state)
    for i, program in enumerate(programs):
        program.params = jax.tree.map(lambda a, i=i: a[i], fitted)
    return [{name: np.concatenate([r[name][i] for r in rows]) for name in rows[0]} for i in range(c)]
