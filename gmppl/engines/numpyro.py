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

from gmppl.engines.base import ModelInfo, Trainer
from gmppl.engines.sites import check_event_shape, info_from_traces, invert_pushforward
from gmppl.errors import DataError, DeviceError, ModelError, NotSupported, TrainingError
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
        self.extras: dict[str, Any] = {}  # what a backend adds (critic, settings), by name

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
    def sample(self, n: int, *, key: Any) -> Any:
        return _jit_sample(self, n)(self.params, key)

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


class JaxTrainer(Trainer):
    """Runs ``chunk`` steps per dispatch in one jitted ``lax.scan``; minibatches drawn on device."""

    chunk = 100

    def run(
        self,
        program: NumPyroProgram,
        backend: Any,
        data: np.ndarray,
        *,
        steps: int,
        batch_size: int,
        seed: int,
        optim: Any,
        callbacks: tuple,
        progress: Any,
    ) -> tuple[Any, dict[str, np.ndarray]]:
        key = jax.random.PRNGKey(seed)
        x = program.as_array(data)
        n = x.shape[0]
        key, k0 = jax.random.split(key)
        state, step = backend.jax_init(program, x[: min(n, batch_size)], k0, optim)
        chunk = min(self.chunk, steps)
        run_chunk = _chunk_runner(step, batch_size, chunk)
        rows: list[dict[str, np.ndarray]] = []
        done = 0
        perm, offset = jnp.arange(n), jnp.int32(n)  # the first step draws a fresh permutation
        # Commit every array of the carry to the device: the chunk's outputs are committed, and a carry
        # that was not (optax's step count, perm) would make the second chunk compile all over again.
        state, perm, offset = jax.tree.map(
            lambda a: jax.device_put(a, program.device) if isinstance(a, jax.Array) else a, (state, perm, offset)
        )
        while done < steps:
            key, k = jax.random.split(key)
            active = min(chunk, steps - done)
            (new_state, perm, offset), metrics = run_chunk((state, perm, offset), x, k, jnp.int32(active))
            metrics = {k: np.asarray(v)[:active] for k, v in metrics.items()}
            bad = ~np.isfinite(metrics["loss"])
            if bad.any():
                first = done + int(np.argmax(bad))
                program.params = state["params"]
                raise TrainingError(
                    f"the loss became {metrics['loss'][first - done]} at step {first}; parameters were kept "
                    f"from step {done}. Lower the learning rate (optim=gm.optim.Adam(lr=...)), clip gradients "
                    "(Adam(clip_norm=...)) or check the model."
                )
            state = new_state
            rows.append(metrics)
            done += active
            progress.update(done, float(metrics["loss"][-1]))
            for cb in callbacks:
                cb(done, {k: float(v[-1]) for k, v in metrics.items()})
        program.params = backend.jax_params(state)
        history = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        return state, history


def _chunk_runner(step: Callable, batch_size: int, length: int) -> Callable:
    """Jitted ``length`` steps; steps past ``active`` leave the state unchanged (one compile for all).

    Minibatches are drawn without replacement: each epoch walks a fresh permutation of the data
    (the tail that does not fill a batch is skipped that epoch), so ``batch_size == len(data)`` is
    full-batch gradient descent.
    """

    @jax.jit
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
