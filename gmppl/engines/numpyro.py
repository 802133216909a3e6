"""The NumPyro/JAX engine: a user's NumPyro program as pure functions of its parameters.

Parameters are an explicit pytree (unconstrained), substituted into the program with
``numpyro.handlers.substitute``; everything a backend differentiates is a pure function
of ``(params, batch, key)``, and the training loop runs many steps per dispatch with
``jax.lax.scan`` on the device: a backend's state is explicit, created by an init and advanced by a
pure, jittable step (``docs/design.md``, "Concepts").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from gmppl.engines.base import ModelInfo, shapes_only
from gmppl.engines.calls import Call, make_call
from gmppl.engines.jax_cache import enable_jax_cache
from gmppl.engines.sites import (
    check_event_shape,
    check_per_example,
    check_support,
    info_from_traces,
    invert_pushforward,
)
from gmppl.errors import CheckpointError, DataError, DeviceError, ModelError, NotSupported
from gmppl.optim import build_optax


def resolve_device(device: Any) -> Any:
    """``None`` keeps JAX's default device; ``"cpu"``, ``"cuda"``/``"gpu"``, ``"cuda:N"`` pick one of this process's."""
    if device is None:
        return jax.local_devices()[0]  # this process's first (all of JAX's in one process; across hosts, its own)
    if not isinstance(device, str):
        return device  # a jax Device
    kind, _, index = device.partition(":")
    platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(kind)
    if platform is None:
        raise DeviceError(f"device={device!r} is not a JAX device; use 'cpu', 'cuda' or 'cuda:N'.")
    try:
        devs = jax.local_devices(backend=platform)
    except RuntimeError as e:
        raise DeviceError(f"device={device!r}: JAX has no {platform} backend here; use device='cpu'.") from e
    i = int(index) if index else 0
    if i >= len(devs):
        raise DeviceError(f"device={device!r}: only {len(devs)} {platform} device(s).")
    return devs[i]


class NumPyroProgram:
    """A NumPyro program ``model(x=None, n=None)`` with explicit parameters ``self.params``."""

    engine = "numpyro"

    def __init__(
        self, model: Callable, *, observed: str = "x", latent: str = "z", device: Any = None, call: Call | None = None
    ):
        enable_jax_cache()  # before the first compilation: a later process loads the executables from disk
        self.model = model
        self.call = call if call is not None else make_call(model, observed)
        self.fn = self.call.bind(model)  # the program as fn(x=None, n=None, **inputs)
        self._jit_cache: dict = {}
        self.observed = observed
        self.latent = latent
        self.device = resolve_device(device)
        self.constraints: dict[str, Any] = {}
        self.params: dict[str, Any] | None = None

    # ------------------------------------------------------------------ parameters
    def init_params(self, key: Any, x: Any, inputs: dict | None = None) -> dict[str, Any]:
        """Unconstrained initial parameters, read from a seeded run of the program."""
        return self._params_of(
            handlers.trace(handlers.seed(self.fn, key)).get_trace(x=x, n=None, **self.as_inputs(inputs))
        )

    def _params_of(self, tr: dict) -> dict[str, Any]:
        """The unconstrained values of a run's ``param`` sites (their constraints recorded)."""
        params = {}
        for name, site in tr.items():
            if site["type"] != "param":
                continue
            c = site["kwargs"].get("constraint", constraints.real)
            self.constraints[name] = c
            v = site["value"]
            params[name] = v if c is constraints.real else biject_to(c).inv(v)
        return jax.device_put(params, self.device)

    def constrain(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v if self.constraints.get(k, constraints.real) is constraints.real else biject_to(self.constraints[k])(v)
            for k, v in params.items()
        }

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to do: a NumPyro program's parameters are arguments, never held by the caller's modules."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        return self.params or {}

    def constrained_params(self) -> dict[str, Any]:
        """Every parameter as ``numpyro.param(name)`` returns it inside the program (constrained)."""
        return self.constrain(self.params or {})

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.params = jax.device_put(values, self.device)

    def as_array(self, x: Any) -> Any:
        return jax.device_put(np.asarray(x), self.device)  # no compile (jnp.asarray stages one per shape)

    # ------------------------------------------------------------------ running
    def as_inputs(self, inputs: dict | None) -> dict[str, Any]:
        """Inputs as JAX arrays (integer labels keep their dtype)."""
        if not inputs:
            return {}
        return {k: v if isinstance(v, jax.Array) else jax.device_put(np.asarray(v)) for k, v in inputs.items()}

    def trace(
        self, params: dict[str, Any], key: Any, x: Any = None, n: int | None = None, inputs: dict | None = None
    ) -> dict:
        rows = self.as_inputs(inputs)
        if x is None and n is None and rows:
            n = len(next(iter(rows.values())))
        m = handlers.seed(handlers.substitute(self.fn, data=self.constrain(params)), key)
        return handlers.trace(m).get_trace(x=x, n=n, **rows)

    def inspect(self, example: np.ndarray, inputs: dict | None = None) -> ModelInfo:
        """Site roles from two seeded runs: one conditioned on ``example`` (its parameters are the initial
        values) and one generating as many examples. Runs with the same shapes share JAX's per-operation
        compilations, which are most of a first fit's set-up time."""
        x = jax.device_put(np.asarray(example))
        key = jax.random.PRNGKey(0)
        try:
            rows = self.as_inputs(inputs)
            n = max(2, len(example))
            head = {k: v[:n] for k, v in rows.items()}
            with shapes_only():  # its values are not read: ODE/SDE draws are not solved
                gen = handlers.trace(handlers.seed(self.fn, key)).get_trace(x=None, n=n, **head)
            check_event_shape(gen, self.observed, example)
            cond = handlers.trace(handlers.seed(self.fn, key)).get_trace(x=x, n=None, **rows)
            params = self._params_of(cond)
            check_support(cond, self.observed, example)
            check_per_example(cond, self.observed, len(example))
        except (NotSupported, DataError, ModelError):
            raise
        except Exception as e:
            raise ModelError(
                f"running the NumPyro program failed: {type(e).__name__}: {e}. gmppl calls it as "
                "the program with its data (or None to generate) and inputs by keyword; check it accepts them."
                + self.call.hint()
            ) from e
        if self.params is None:
            self.params = params
        return info_from_traces(cond, gen, self.observed, self.latent, len(example), "numpyro")

    # ------------------------------------------------------------------ quantities (pure)
    def sample_fn(self, params: dict[str, Any], key: Any, n: int | None, inputs: dict | None = None) -> Any:
        """``n`` generated values of the observed site (one per input row); differentiable in ``params``."""
        return self.trace(params, key, x=None, n=n, inputs=inputs)[self.observed]["value"]

    def log_prob_fn(self, params: dict[str, Any], x: Any, key: Any = None, inputs: dict | None = None) -> Any:
        """Per-example ``log p(x_i)`` of the observed site."""
        tr = self.trace(params, jax.random.PRNGKey(0) if key is None else key, x=x, inputs=inputs)
        site = tr[self.observed]
        lp = site["fn"].log_prob(site["value"])
        return lp.reshape(lp.shape[0], -1).sum(-1) if lp.ndim > 1 else lp

    # ------------------------------------------------------------------ quantities (bound)
    def sample(self, n: int | None, *, seed: int | None = None, inputs: dict | None = None) -> Any:
        """``n`` generated values of the observed site, or one per input row (``seed`` None: fresh draws)."""
        rows = self.as_inputs(inputs)
        if rows:
            n = None
        return _jit_sample(self, n)(self.params, self.key(seed), rows)

    def run(
        self, n: int, *, seed: int | None = None, given: dict[str, Any] | None = None, inputs: dict | None = None
    ) -> dict[str, dict]:
        """One run generating ``n`` examples with the sites in ``given`` fixed: each sample site's ``value`` and
        ``log_prob`` (summed over its event), as numpy."""
        params = dict(self.params or {})
        m = handlers.condition(self.fn, data={k: jnp.asarray(v) for k, v in (given or {}).items()})
        m = handlers.seed(handlers.substitute(m, data=self.constrain(params)), self.key(seed))
        tr = handlers.trace(m).get_trace(x=None, n=n, **self.as_inputs(inputs))
        out = {}
        for name, site in tr.items():
            if site["type"] == "deterministic":
                out[name] = {"value": np.asarray(site["value"]), "log_prob": np.zeros(np.shape(site["value"])[:1])}
            elif site["type"] == "sample":
                lp = site["fn"].log_prob(site["value"])
                out[name] = {"value": np.asarray(site["value"]), "log_prob": np.asarray(lp)}
        return out

    @staticmethod
    def key(seed: int | None) -> Any:
        """A PRNG key from ``seed`` (None: fresh entropy)."""
        return jax.random.PRNGKey(np.random.SeedSequence(seed).generate_state(1)[0] if seed is None else seed)

    def log_prob(self, x: Any, inputs: dict | None = None) -> Any:
        return _jit_log_prob(self)(self.params, self.as_array(x), None, self.as_inputs(inputs))

    def invert(self, x: Any, inputs: dict | None = None) -> Any:
        """``z = g^{-1}(x)`` for an observed site that is an invertible pushforward (a flow)."""
        site = self.trace(self.state_dict(), jax.random.PRNGKey(0), x=self.as_array(x), inputs=inputs)[self.observed]
        return invert_pushforward(site["fn"], site["value"])


def _jit_sample(program: NumPyroProgram, n: int | None) -> Callable:
    cache = program._jit_cache
    if ("sample", n) not in cache:
        cache[("sample", n)] = jax.jit(lambda params, key, rows: program.sample_fn(params, key, n, rows))
    return cache[("sample", n)]


def _jit_log_prob(program: NumPyroProgram) -> Callable:
    cache = program._jit_cache
    if "log_prob" not in cache:
        cache["log_prob"] = jax.jit(program.log_prob_fn)
    return cache["log_prob"]


def gradient_step(loss_fn: Callable, optimizer: Any) -> Callable:
    """A pure step ``(state, batch, key, inputs) -> (state, metrics)`` minimising ``loss_fn(params, batch, key, inputs)``.

    ``loss_fn`` returns ``(loss, metrics)``; ``state`` is ``{"params", "opt_state"}``.
    """
    import optax

    def step(state: dict, batch: Any, key: Any, inputs: Any = None) -> tuple[dict, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key, inputs)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {**state, "params": params, "opt_state": opt_state}, {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            **metrics,
        }

    return step


def make_optimizer(optim: Any) -> Any:
    return build_optax(optim)


def first_rows(tree: Any, m: int) -> Any:
    """The first ``m`` rows of every array in ``tree`` as abstract values (``jax.ShapeDtypeStruct``, in the dtype
    JAX gives the array): for running a program with ``jax.eval_shape`` at another batch size, where an eager run
    would compile each of its operations again."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct((m, *a.shape[1:]), jax.dtypes.canonicalize_dtype(a.dtype)), tree)


def _floating(tree: Any) -> list:
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def _all_finite(leaves: list) -> Any:
    return jnp.all(jnp.stack([jnp.isfinite(a).all() for a in leaves])) if leaves else jnp.bool_(True)


class JaxLoop:
    """Training steps on JAX: up to ``chunk`` steps per dispatch in one jitted ``lax.scan`` with minibatches
    drawn on the device; the chains of an ensemble in one program, ``jax.vmap`` over the scan.

    With ``devices`` (more than one): one chain splits each minibatch over a 1-D mesh (axis ``"batch"``,
    parameters and data replicated); an ensemble instead spreads its chains over the mesh (axis
    ``"chains"``: every array of the stacked state sharded on its leading chain axis, the data replicated),
    so each device runs whole chains on their full batches, as one device would.

    Step ``t`` of a chain draws from ``fold_in(key, t)`` of the chain's key, so the random stream does not
    depend on how the steps are cut into chunks (validation, checkpoints, a resumed fit), and each chain
    draws the stream it would draw alone: an ensemble equals its chains fit one by one up to float
    reassociation, compiled once instead of once per chain.
    """

    chunk = 100

    def __init__(
        self,
        programs: list,
        backend: Any,
        plans: list,
        data: Any,
        *,
        batch_size: int,
        steps: int,
        inputs: dict | None = None,
        devices: list | None = None,
    ):
        self.programs, self.backend, self.plans = programs, backend, plans
        self.chains = len(programs)
        self.batch_size = batch_size
        self.length = min(self.chunk, steps)
        self.device: Any = programs[0].device
        self.state_device: Any = None  # where the training state lives (None: self.device)
        self.shard = None
        self.on_mesh = devices is not None and len(devices) > 1
        if devices is not None and self.on_mesh:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            if self.chains > 1:  # an ensemble: whole chains per device, each with its full batch
                mesh = Mesh(np.asarray(devices), ("chains",))
                self.state_device = NamedSharding(mesh, PartitionSpec("chains"))
            else:  # data-parallel: each batch split over a 1-D mesh, the rest replicated
                mesh = Mesh(np.asarray(devices), ("batch",))
                self.shard = lambda a: jax.lax.with_sharding_constraint(
                    a, NamedSharding(mesh, PartitionSpec("batch", *[None] * (a.ndim - 1)))
                )
            self.device = NamedSharding(mesh, PartitionSpec())
        # through the host when on a mesh: a mesh may span hosts, where device_put takes the same numpy array
        put = _host if self.on_mesh else (lambda a: a)
        self.x = jax.device_put(put(programs[0].as_array(data)), self.device)
        self.inputs = jax.device_put(jax.tree.map(put, programs[0].as_inputs(inputs)), self.device)
        # the first batch, which sets the state's shapes, cut on the host (slicing a device array compiles)
        m = min(self.x.shape[0], batch_size)
        self.head = jax.device_put(
            (np.asarray(data)[:m], {k: np.asarray(v)[:m] for k, v in programs[0].as_inputs(inputs).items()}),
            self.device,
        )

    def init(self, seeds: list[int], optim: Any) -> tuple:
        n, b = self.x.shape[0], self.batch_size
        states, keys, step = [], [], None
        for program, plan, seed in zip(self.programs, self.plans, seeds, strict=True):
            key, k0 = jax.random.split(jax.random.PRNGKey(seed))
            state, step_c = self.backend.jax_init(program, plan, *self.head, k0, optim)
            step = step or step_c  # the same pure function for every chain: chain 0's closure
            states.append(state)
            keys.append(key)
        assert step is not None
        runner = _chunk_runner(step, b, self.length, self.shard)
        c = self.chains
        if c == 1:
            self._run = jax.jit(runner)
            carry: tuple = (states[0], np.arange(n, dtype=np.int32), np.int32(n), keys[0])
        else:
            # spread over devices, every output (carry and metrics) keeps its leading chain axis sharded
            spread = {} if self.state_device is None else {"out_shardings": self.state_device}
            self._run = jax.jit(jax.vmap(runner, in_axes=((0, 0, 0, 0), None, None, None, None)), **spread)
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
            carry = (stacked, jnp.tile(jnp.arange(n), (c, 1)), jnp.full((c,), n, jnp.int32), jnp.stack(keys))
        # Commit every array of the carry to the device, with a strong dtype: the chunk's outputs are committed
        # and never weakly typed, and a carry that differed (optax's step count, perm; a parameter started
        # from a Python float, ``numpyro.param("w", 1.0)``) would make later chunks compile all over again.
        where = self.state_device or self.device
        # onto a mesh through the host: it may span hosts, and numpy arrays are never weakly typed
        strong = (
            _host
            if self.on_mesh
            else (lambda a: jnp.asarray(a, dtype=a.dtype) if getattr(a, "weak_type", False) else a)
        )
        return jax.tree.map(
            lambda a: jax.device_put(strong(a), where) if isinstance(a, jax.Array | np.ndarray | np.generic) else a,
            carry,
        )

    def run_chunk(self, state: tuple, k: int, start: int = 0) -> tuple[tuple, dict[str, np.ndarray]]:
        """``k`` steps from step ``start`` (the steps already taken: it seeds each step's key)."""
        carry, metrics, finite = self._run(state, self.x, self.inputs, np.int32(start), np.int32(k))
        self._finite = (carry, finite)  # read by `finite` (computed in the chunk: no separate compile or dispatch)
        out = {name: _host(v).astype(np.float64).reshape(self.chains, -1)[:, :k] for name, v in metrics.items()}
        return carry, out

    def snapshot(self, state: tuple) -> tuple:
        return state  # immutable arrays: keeping the reference keeps the values

    def restore(self, state: tuple, snap: tuple) -> tuple:
        return snap

    def finite(self, snap: tuple) -> bool:
        """Whether every floating array of the state (parameters, optimiser moments, averages) is finite."""
        done = getattr(self, "_finite", None)
        if done is not None and done[0] is snap:  # the state the last chunk returned: it checked itself
            return bool(np.all(_host(done[1])))
        return bool(jax.jit(_all_finite)(_floating(snap)))

    def to_arrays(self, state: tuple) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Every array of the training state (parameters, optimiser states, averages, data order, keys)."""
        return {f"leaf{i:05d}": _host(a) for i, a in enumerate(jax.tree.leaves(state))}, {}

    def from_arrays(self, template: tuple, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> tuple:
        """The training state from ``to_arrays`` onto the structure of ``template`` (a fresh ``init``)."""
        leaves, treedef = jax.tree.flatten(template)
        if len(arrays) != len(leaves):
            raise CheckpointError(f"the checkpoint holds {len(arrays)} state arrays, this fit {len(leaves)}.")
        new = []
        for i, leaf in enumerate(leaves):
            a = arrays[f"leaf{i:05d}"]
            if a.shape != np.shape(leaf) or a.dtype != np.asarray(leaf).dtype:
                raise CheckpointError(
                    f"state array {i} is {a.dtype}{list(a.shape)} in the checkpoint but "
                    f"{np.asarray(leaf).dtype}{list(np.shape(leaf))} in this fit: it is another fit's checkpoint."
                )
            new.append(jax.device_put(a, self.state_device or self.device))
        return jax.tree.unflatten(treedef, new)

    def fitted(self, state: tuple) -> list:
        """The fitted parameters of every chain (the backend's: an average of iterates where it keeps one)."""
        params = self.backend.jax_params(state[0])
        if self.on_mesh:  # each chain's values onto its program's device, through the host (a mesh may span hosts)
            params = jax.tree.map(_host, params)
            if self.chains == 1:
                return [jax.device_put(params, self.programs[0].device)]
            return [
                jax.device_put(jax.tree.map(lambda a, i=i: a[i], params), p.device) for i, p in enumerate(self.programs)
            ]
        if self.chains == 1:
            return [params]
        return [jax.tree.map(lambda a, i=i: a[i], params) for i in range(self.chains)]

    def evaluate(self, state: tuple, fn: Callable[[Any, Any], Any]) -> list:
        """``fn(program, plan)`` per chain at the fitted values."""
        out = []
        for program, plan, params in zip(self.programs, self.plans, self.fitted(state), strict=True):
            kept, program.params = program.params, params
            try:
                out.append(fn(program, plan))
            finally:
                program.params = kept
        return out

    def finish(self, state: tuple) -> None:
        for program, params in zip(self.programs, self.fitted(state), strict=True):
            program.params = params


def _host(a: Any) -> np.ndarray:
    """``a`` as one numpy array on this host; an array sharded over several hosts' devices is gathered first."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def _chunk_runner(step: Callable, batch_size: int, length: int, shard: Callable | None = None) -> Callable:
    """Up to ``length`` steps of ``step``: ``run`` takes ``active`` of them (one compile for every count) and
    returns the carry, the per-step metrics (zero past ``active``) and whether every floating array of the
    state is finite.

    Minibatches are drawn without replacement: each epoch walks a fresh permutation of the data
    (the tail that does not fill a batch is skipped that epoch); ``batch_size == len(data)`` is
    full-batch gradient descent on the data as given (no permutation). Step ``t`` uses ``fold_in(key, t)``.
    With ``shard``, each minibatch is split over the devices (one program, XLA's SPMD partitioner averages
    the gradient over the global batch).
    """
    place = shard or (lambda a: a)

    def run(carry: Any, x: Any, inputs: Any, start: Any, active: Any) -> tuple[Any, Any, Any]:
        n = x.shape[0]
        state, perm, offset, key = carry

        def one(i: Any, state: Any, perm: Any, offset: Any) -> tuple[Any, Any, Any, Any]:
            k1, k2 = jax.random.split(jax.random.fold_in(key, start + i))
            if batch_size >= n:  # full batch: every step sees all the data, in any order (no shuffle to compile)
                return (*step(state, place(x), k2, jax.tree.map(place, inputs)), perm, offset)
            fresh = offset + batch_size > n
            perm = jax.lax.cond(fresh, lambda: jax.random.permutation(k1, n), lambda: perm)
            offset = jnp.where(fresh, 0, offset)
            idx = jax.lax.dynamic_slice(perm, (offset,), (batch_size,))
            new, metrics = step(state, place(x[idx]), k2, {k: place(v[idx]) for k, v in inputs.items()})
            return new, metrics, perm, offset + batch_size

        # ``active`` steps in a loop whose trip count is a traced value: one compile for every count, and no
        # step past it to mask (masking each step's state cost a pass over every parameter and moment)
        shapes = jax.eval_shape(one, jnp.int32(0), state, perm, offset)[1]
        metrics = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), shapes)

        def body(i: Any, carry: tuple) -> tuple:
            state, perm, offset, metrics = carry
            state, m, perm, offset = one(i, state, perm, offset)
            return state, perm, offset, jax.tree.map(lambda buf, v: buf.at[i].set(v), metrics, m)

        state, perm, offset, metrics = jax.lax.fori_loop(0, active, body, (state, perm, offset, metrics))
        return (state, perm, offset, key), metrics, _all_finite(_floating(state))

    return run
