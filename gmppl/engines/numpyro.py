"""The NumPyro/JAX engine: a user's NumPyro program as pure functions of its parameters.

Parameters are an explicit pytree (unconstrained), substituted into the program with
``numpyro.handlers.substitute``; everything a backend differentiates is a pure function
of ``(params, batch, key)``, and the training loop runs many steps per dispatch with
``jax.lax.scan`` on the device (STYLE.md practice 1).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from gmppl.engines.base import ModelInfo
from gmppl.engines.sites import check_event_shape, check_support, info_from_traces, invert_pushforward
from gmppl.errors import DataError, DeviceError, ModelError, NotSupported
from gmppl.optim import build_optax


def resolve_device(device: Any) -> Any:
    """``None`` keeps JAX's default device; ``"cpu"``, ``"cuda"``/``"gpu"``, ``"cuda:N"`` pick one."""
    if device is None:
        return jax.devices()[0]
    if not isinstance(device, str):
        return device  # a jax Device
    kind, _, index = device.partition(":")
    platform = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(kind)
    if platform is None:
        raise DeviceError(f"device={device!r} is not a JAX device; use 'cpu', 'cuda' or 'cuda:N'.")
    try:
        devs = jax.devices(platform)
    except RuntimeError as e:
        raise DeviceError(f"device={device!r}: JAX has no {platform} backend here; use device='cpu'.") from e
    i = int(index) if index else 0
    if i >= len(devs):
        raise DeviceError(f"device={device!r}: only {len(devs)} {platform} device(s).")
    return devs[i]


class NumPyroProgram:
    """A NumPyro program ``model(x=None, n=None)`` with explicit parameters ``self.params``."""

    engine = "numpyro"

    def __init__(self, model: Callable, *, observed: str = "x", latent: str = "z", device: Any = None):
        self.model = model
        self.observed = observed
        self.latent = latent
        self.device = resolve_device(device)
        self.constraints: dict[str, Any] = {}
        self.params: dict[str, Any] | None = None

    # ------------------------------------------------------------------ parameters
    def init_params(self, key: Any, x: Any) -> dict[str, Any]:
        """Unconstrained initial parameters, read from a seeded run of the program."""
        tr = handlers.trace(handlers.seed(self.model, key)).get_trace(x=x, n=None)
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

    def state_dict(self) -> dict[str, Any]:
        return self.params or {}

    def constrained_params(self) -> dict[str, Any]:
        """Every parameter as ``numpyro.param(name)`` returns it inside the program (constrained)."""
        return self.constrain(self.params or {})

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.params = jax.device_put(values, self.device)

    def as_array(self, x: Any) -> Any:
        return jax.device_put(jnp.asarray(np.asarray(x)), self.device)

    # ------------------------------------------------------------------ running
    def trace(self, params: dict[str, Any], key: Any, x: Any = None, n: int | None = None) -> dict:
        m = handlers.seed(handlers.substitute(self.model, data=self.constrain(params)), key)
        return handlers.trace(m).get_trace(x=x, n=n)

    def inspect(self, example: np.ndarray) -> ModelInfo:
        x = jnp.asarray(example)
        key = jax.random.PRNGKey(0)
        try:
            gen = handlers.trace(handlers.seed(self.model, key)).get_trace(x=None, n=2)
            check_event_shape(gen, self.observed, example)
            params = self.init_params(key, x)
            cond = self.trace(params, key, x=x)
            check_support(cond, self.observed, example)
            gen = self.trace(params, key, x=None, n=2)
        except (NotSupported, DataError):
            raise
        except Exception as e:
            raise ModelError(
                f"running the NumPyro program failed: {type(e).__name__}: {e}. gmppl calls it as "
                "model(x=batch) and model(x=None, n=k); check it accepts those arguments."
            ) from e
        if self.params is None:
            self.params = params
        return info_from_traces(cond, gen, self.observed, self.latent, len(example), "numpyro")

    # ------------------------------------------------------------------ quantities (pure)
    def sample_fn(self, params: dict[str, Any], key: Any, n: int) -> Any:
        """``n`` generated values of the observed site; differentiable in ``params``."""
        return self.trace(params, key, x=None, n=n)[self.observed]["value"]

    def log_prob_fn(self, params: dict[str, Any], x: Any, key: Any = None) -> Any:
        """Per-example ``log p(x_i)`` of the observed site."""
        tr = self.trace(params, jax.random.PRNGKey(0) if key is None else key, x=x)
        site = tr[self.observed]
        lp = site["fn"].log_prob(site["value"])
        return lp.reshape(lp.shape[0], -1).sum(-1) if lp.ndim > 1 else lp

    # ------------------------------------------------------------------ quantities (bound)
    def sample(self, n: int, *, seed: int | None = None) -> Any:
        """``n`` generated values of the observed site (``seed`` None: fresh draws)."""
        return _jit_sample(self, n)(self.params, self.key(seed))

    def run(self, n: int, *, seed: int | None = None, given: dict[str, Any] | None = None) -> dict[str, dict]:
        """One run generating ``n`` examples with the sites in ``given`` fixed: each sample site's ``value`` and
        ``log_prob`` (summed over its event), as numpy."""
        params = dict(self.params or {})
        m = handlers.condition(self.model, data={k: jnp.asarray(v) for k, v in (given or {}).items()})
        m = handlers.seed(handlers.substitute(m, data=self.constrain(params)), self.key(seed))
        tr = handlers.trace(m).get_trace(x=None, n=n)
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

    def log_prob(self, x: Any) -> Any:
        return _jit_log_prob(self)(self.params, self.as_array(x))

    def invert(self, x: Any) -> Any:
        """``z = g^{-1}(x)`` for an observed site that is an invertible pushforward (a flow)."""
        site = self.trace(self.params, jax.random.PRNGKey(0), x=self.as_array(x))[self.observed]
        return invert_pushforward(site["fn"], site["value"])


def _jit_sample(program: NumPyroProgram, n: int) -> Callable:
    cache = program.__dict__.setdefault("_jit_cache", {})
    if ("sample", n) not in cache:
        cache[("sample", n)] = jax.jit(partial(program.sample_fn, n=n))
    return cache[("sample", n)]


def _jit_log_prob(program: NumPyroProgram) -> Callable:
    cache = program.__dict__.setdefault("_jit_cache", {})
    if "log_prob" not in cache:
        cache["log_prob"] = jax.jit(program.log_prob_fn)
    return cache["log_prob"]


def gradient_step(loss_fn: Callable, optimizer: Any) -> Callable:
    """A pure step ``(state, batch, key) -> (state, metrics)`` minimising ``loss_fn(params, batch, key)``.

    ``loss_fn`` returns ``(loss, metrics)``; ``state`` is ``{"params", "opt_state"}``.
    """
    import optax

    def step(state: dict, batch: Any, key: Any) -> tuple[dict, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
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


class JaxLoop:
    """Training steps on JAX: ``chunk`` steps per dispatch in one jitted ``lax.scan`` with minibatches
    drawn on the device; the chains of an ensemble in one program, ``jax.vmap`` over the scan.

    Each chain draws the random stream it would draw alone (its own seed), so an ensemble equals its
    chains fit one by one up to float reassociation, compiled once instead of once per chain.
    """

    chunk = 100

    def __init__(self, programs: list, backend: Any, plans: list, data: Any, *, batch_size: int, steps: int):
        self.programs, self.backend, self.plans = programs, backend, plans
        self.chains = len(programs)
        self.batch_size = batch_size
        self.length = min(self.chunk, steps)
        self.x = programs[0].as_array(data)
        self.device = programs[0].device

    def init(self, seeds: list[int], optim: Any) -> tuple:
        n, b = self.x.shape[0], self.batch_size
        states, keys, step = [], [], None
        for program, plan, seed in zip(self.programs, self.plans, seeds, strict=True):
            key, k0 = jax.random.split(jax.random.PRNGKey(seed))
            state, step_c = self.backend.jax_init(program, plan, self.x[: min(n, b)], k0, optim)
            step = step or step_c  # the same pure function for every chain: chain 0's closure
            states.append(state)
            keys.append(key)
        runner = _chunk_runner(step, b, self.length)
        c = self.chains
        if c == 1:
            self._run = jax.jit(runner)
            carry = (states[0], jnp.arange(n), jnp.int32(n), keys[0])
        else:
            self._run = jax.jit(jax.vmap(runner, in_axes=((0, 0, 0), None, 0, None)))
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
            carry = (stacked, jnp.tile(jnp.arange(n), (c, 1)), jnp.full((c,), n, jnp.int32), jnp.stack(keys))
        # Commit every array of the carry to the device, with a strong dtype: the chunk's outputs are committed
        # and never weakly typed, and a carry that differed (optax's step count, perm; a parameter started
        # from a Python float, ``numpyro.param("w", 1.0)``) would make later chunks compile all over again.
        return jax.tree.map(
            lambda a: jax.device_put(jnp.asarray(a, dtype=a.dtype), self.device) if isinstance(a, jax.Array) else a,
            carry,
        )

    def run_chunk(self, state: tuple, k: int) -> tuple[tuple, dict[str, np.ndarray]]:
        train, perm, offset, key = state
        if self.chains == 1:
            key, kc = jax.random.split(key)
        else:
            pair = jax.vmap(jax.random.split)(key)
            key, kc = pair[:, 0], pair[:, 1]
        (train, perm, offset), metrics = self._run((train, perm, offset), self.x, kc, jnp.int32(k))
        out = {name: np.asarray(v, dtype=np.float64).reshape(self.chains, -1)[:, :k] for name, v in metrics.items()}
        return (train, perm, offset, key), out

    def snapshot(self, state: tuple) -> tuple:
        return state  # immutable arrays: keeping the reference keeps the values

    def restore(self, state: tuple, snap: tuple) -> tuple:
        return snap

    def fitted(self, state: tuple) -> list:
        """The fitted parameters of every chain (the backend's: an average of iterates where it keeps one)."""
        params = self.backend.jax_params(state[0])
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


def _chunk_runner(step: Callable, batch_size: int, length: int) -> Callable:
    """``length`` steps of ``step``; steps past ``active`` leave the state unchanged (one compile for all).

    Minibatches are drawn without replacement: each epoch walks a fresh permutation of the data
    (the tail that does not fill a batch is skipped that epoch), so ``batch_size == len(data)`` is
    full-batch gradient descent.
    """

    def run(carry: Any, x: Any, key: Any, active: Any) -> tuple[Any, Any]:
        n = x.shape[0]

        def body(carry: Any, inp: Any) -> tuple[Any, Any]:
            state, perm, offset = carry
            i, k = inp
            k1, k2 = jax.random.split(k)
            fresh = offset + batch_size > n
            perm = jax.lax.cond(fresh, lambda: jax.random.permutation(k1, n), lambda: perm)
            offset = jnp.where(fresh, 0, offset)
            idx = jax.lax.dynamic_slice(perm, (offset,), (batch_size,))
            new, metrics = step(state, x[idx], k2)
            keep = i < active
            new = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, state)
            return (new, perm, jnp.where(keep, offset + batch_size, offset)), metrics

        return jax.lax.scan(body, carry, (jnp.arange(length), jax.random.split(key, length)))

    return run
