"""The backend protocol: capabilities checked before step 1, a per-fit plan, and ``init``/``step`` on
each engine.

A backend is a small final class. Most minimise one objective; they only write ``torch_loss`` and
``jax_loss`` and inherit the rest. Backends with several players (adversarial) override
``torch_init``/``torch_step``/``jax_init``; samplers (NUTS) derive from ``SamplerBackend``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from gmppl.engines.base import ModelInfo
from gmppl.errors import BackendError, NotSupported

REGISTRY: dict[str, type[Backend]] = {}

CAPABILITY_TEXT = {
    "density": "a tractable density of the observed site with no unobserved latents "
    "(a flow via gm.models.Pushforward, or a fully observed model)",
    "observation_model": "an observation distribution p(x|z) with a log_prob, given a latent z",
    "latent": "a latent sample site",
    "reparameterized_sample": "reparameterised samples of the observed site "
    "(a deterministic site, a Pushforward, or a distribution with rsample)",
    "score_network": "a score network (the observed site a gm.models.Diffusion)",
    "velocity_field": "a velocity field (the observed site a gm.models.ContinuousFlow)",
}


@dataclass(frozen=True)
class StepState:
    """Torch-side training state of a single-objective backend."""

    program: Any
    plan: Any
    params: list
    optimizer: Any


class Backend:
    """Base of every inference backend.

    Per fit, ``prepare`` returns the backend's *plan* (its guide, critic, caches: whatever it adds to
    a program); ``gm.fit`` keeps one per chain beside the program and passes it back to every method.
    Nothing is written onto the program but parameters (a guide's or critic's, saved with the fit).
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_") and cls.__module__ != __name__:
            REGISTRY[cls.__name__] = cls

    @property
    def default_optim(self) -> Any:
        """The optimiser when ``gm.fit`` is given none (None: ``gm.optim.Adam()``)."""
        return None

    # ------------------------------------------------------------------ capabilities
    def required(self) -> frozenset[str]:
        return self.requires

    def check(self, info: ModelInfo) -> None:
        """Refuse a model that lacks what this backend needs, naming the backends that would work."""
        missing = self.required() - info.capabilities
        if not missing:
            return
        need = "; ".join(CAPABILITY_TEXT.get(m, m) for m in sorted(missing))
        works = [name for name, cls in REGISTRY.items() if _default_requires(cls) <= info.capabilities]
        hint = f" Backends that can fit this model: {', '.join(works)}." if works else ""
        raise NotSupported(
            f"{type(self).__name__} needs {need}; the program's site {info.observed!r} does not offer it"
            f"{' (it is an implicit model: samples only)' if info.implicit else ''}.{hint}"
        )

    def prepare(self, program: Any, info: ModelInfo, example: Any, *, seed: int, inputs: dict | None = None) -> Any:
        """Build what the backend adds to the program (a guide, a critic) and return it as the fit's plan."""
        return None

    # ------------------------------------------------------------------ torch
    def torch_loss(self, program: Any, plan: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        """``(loss, metrics)`` on a minibatch ``batch`` with its rows of the ``inputs``."""
        raise NotImplementedError

    def torch_init(self, program: Any, plan: Any, batch: Any, inputs: dict | None, optim: Any) -> Any:
        from gmppl.engines.pyro import make_optimizer

        params = list(program.params().values())
        return StepState(program=program, plan=plan, params=params, optimizer=make_optimizer(optim, params))

    def torch_step(self, state: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        from gmppl.engines.pyro import gradient_step

        loss, metrics = self.torch_loss(state.program, state.plan, batch, inputs)
        norm = gradient_step(loss, state.optimizer, state.params)
        return state, {"loss": loss.detach(), "grad_norm": norm, **metrics}

    def torch_tensors(self, state: Any) -> list:
        """Tensors of the training state besides the program's parameters that a snapshot must keep
        (an average of iterates)."""
        return []

    def torch_optimizers(self, state: Any) -> list:
        """The torch optimisers of a training state (a checkpoint keeps each one's state)."""
        return [state.optimizer]

    def torch_counters(self, state: Any) -> dict[str, int]:
        """Plain numbers of a training state that the next step needs (a step count)."""
        return {}

    def torch_set_counters(self, state: Any, counters: dict[str, int]) -> None:
        """Put back what ``torch_counters`` returned."""

    def torch_fitted(self, state: Any) -> Any:
        """A context in which the program holds the fitted values (an average of iterates) mid-training."""
        return contextlib.nullcontext()

    def torch_finish(self, state: Any) -> None:
        """Called once after the last torch step: a backend whose fitted parameters are not the last
        iterate (an average of iterates) writes them into the program here."""

    # ------------------------------------------------------------------ JAX
    def jax_loss(self, program: Any, plan: Any) -> Any:
        """A pure ``(params, batch, key, inputs) -> (loss, metrics)``."""
        raise NotImplementedError

    def jax_init(
        self, program: Any, plan: Any, batch: Any, inputs: dict | None, key: Any, optim: Any
    ) -> tuple[dict, Any]:
        """``(state, step)``: the training state and a pure ``step(state, batch, key, inputs) -> (state, metrics)``."""
        from gmppl.engines.numpyro import gradient_step, make_optimizer

        optimizer = make_optimizer(optim)
        params = program.params
        state = {"params": params, "opt_state": optimizer.init(params)}
        return state, gradient_step(self.jax_loss(program, plan), optimizer)

    def jax_params(self, state: dict) -> Any:
        """The fitted parameters held in a JAX training state: ``state["params"]``, the last iterate (a
        backend that averages iterates returns the average)."""
        return state["params"]

    # ------------------------------------------------------------------ validation
    def validator(self, program: Any, plan: Any, x: Any, inputs: dict | None = None) -> Callable[[], float]:
        """``() -> float``: the training objective on held-out ``x`` at the program's current values, with
        fixed noise (the same draws at every validation, so values are comparable across steps)."""
        xv, rows = program.as_array(x), program.as_inputs(inputs)
        if program.engine == "pyro":

            def torch_value() -> float:
                with program.seeded(0):
                    return float(self.torch_loss(program, plan, xv, rows)[0].detach())

            return torch_value
        import jax

        loss = jax.jit(self.jax_loss(program, plan))
        key = jax.random.PRNGKey(0)
        return lambda: float(loss(program.params, xv, key, rows)[0])

    # ------------------------------------------------------------------ evaluation
    def log_prob(self, program: Any, plan: Any, x: Any, *, inputs: dict | None = None, **kwargs: Any) -> Any:
        """Per-example log-density under the fitted model (exact where the model has one), given each row's inputs."""
        if kwargs:
            raise BackendError(f"{type(self).__name__} log_prob takes no keywords, got {sorted(kwargs)}.")
        return _detach(program.log_prob(x, inputs))

    def sample(
        self, program: Any, plan: Any, n: int | None, *, seed: int | None = None, inputs: dict | None = None
    ) -> Any:
        """``n`` draws of the observed site from the fitted program (one per input row with ``inputs``)."""
        return program.sample(n, seed=seed, inputs=inputs)

    def posterior(
        self, program: Any, plan: Any, x: Any, num_samples: int, *, seed: int | None = None, inputs: dict | None = None
    ) -> Any:
        """Draws of ``z | x``; for an invertible pushforward ``z = g^{-1}(x)`` exactly (repeated)."""
        z = program.invert(x, inputs)
        return _broadcast(z[None], (num_samples, *z.shape))


class SamplerBackend(Backend):
    """A backend that draws from the posterior instead of optimising (NUTS): ``gm.fit`` calls ``draw``
    once per chain; the fit then holds the draws and evaluates through them."""

    def num_draws(self, steps: int) -> int:
        return int(steps)

    def draw(
        self, program: Any, plan: Any, data: Any, *, num_samples: int, seed: int, inputs: dict | None = None
    ) -> tuple[Any, dict]:
        """``(Draws, history)``: posterior draws of the program's unobserved sites given ``data``."""
        raise NotImplementedError


def _detach(a: Any) -> Any:
    return a.detach() if hasattr(a, "detach") else a


def _broadcast(a: Any, shape: tuple) -> Any:
    if hasattr(a, "expand"):
        return a.expand(*shape)
    import jax.numpy as jnp

    return jnp.broadcast_to(a, shape)


def _default_requires(cls: type[Backend]) -> frozenset[str]:
    try:
        return cls().required()
    except Exception:
        return cls.requires
