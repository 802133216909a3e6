"""The backend protocol: capabilities checked before step 1, and ``init``/``step`` on each engine.

A backend is a small object (STYLE.md practice 2). Most minimise one objective; they only
write ``torch_loss`` and ``jax_loss`` and inherit the rest. Backends with several players
(adversarial) override ``torch_init``/``torch_step``/``jax_init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gmppl.engines.base import ModelInfo
from gmppl.errors import NotSupported

REGISTRY: dict[str, type[Backend]] = {}

CAPABILITY_TEXT = {
    "density": "a tractable density of the observed site with no unobserved latents "
    "(a flow via gm.models.Pushforward, or a fully observed model)",
    "observation_model": "an observation distribution p(x|z) with a log_prob, given a latent z",
    "latent": "a latent sample site",
    "reparameterized_sample": "reparameterised samples of the observed site "
    "(a deterministic site, a Pushforward, or a distribution with rsample)",
    "score_network": "a score network (the observed site a gm.models.Diffusion)",
}


@dataclass(frozen=True)
class StepState:
    """Torch-side training state of a single-objective backend."""

    program: Any
    params: list
    optimizer: Any


class Backend:
    """Base of every inference backend."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls

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

    def setup(self, program: Any, info: ModelInfo, example: Any, *, seed: int) -> None:
        """Create what the backend adds to the program (a guide, a critic) before training or loading."""

    # ------------------------------------------------------------------ torch
    def torch_loss(self, program: Any, batch: Any) -> tuple[Any, dict]:
        raise NotImplementedError

    def torch_init(self, program: Any, batch: Any, optim: Any) -> Any:
        from gmppl.engines.pyro import make_optimizer

        params = list(program.params().values())
        return StepState(program=program, params=params, optimizer=make_optimizer(optim, params))

    def torch_step(self, state: StepState, batch: Any) -> tuple[Any, dict]:
        from gmppl.engines.pyro import gradient_step

        loss, metrics = self.torch_loss(state.program, batch)
        norm = gradient_step(loss, state.optimizer, state.params)
        return state, {"loss": loss.detach(), "grad_norm": norm, **metrics}

    def torch_finish(self, state: Any) -> None:
        """Called once after the last torch step: a backend whose fitted parameters are not the last
        iterate (an average of iterates) writes them into the program here."""

    # ------------------------------------------------------------------ JAX
    def jax_loss(self, program: Any) -> Any:
        """A pure ``(params, batch, key) -> (loss, metrics)``."""
        raise NotImplementedError

    def jax_init(self, program: Any, batch: Any, key: Any, optim: Any) -> tuple[dict, Any]:
        from gmppl.engines.numpyro import gradient_step, make_optimizer

        optimizer = make_optimizer(optim)
        params = program.params
        state = {"params": params, "opt_state": optimizer.init(params)}
        return state, gradient_step(self.jax_loss(program), optimizer)

    def jax_params(self, state: dict) -> Any:
        """The fitted parameters held in a JAX training state: ``state["params"]``, the last iterate (a
        backend that averages iterates returns the average)."""
        return state["params"]

    # ------------------------------------------------------------------ evaluation
    def log_prob(self, program: Any, x: Any, **kwargs: Any) -> Any:
        """Per-example log-density under the fitted model (exact where the model has one)."""
        lp = program.log_prob(x)
        return lp.detach() if program.engine == "pyro" else lp

    def sample(self, program: Any, n: int, *, seed: int | None = None, key: Any = None) -> Any:
        """``n`` draws of the observed site from the fitted program."""
        if program.engine == "pyro":
            import torch

            with torch.random.fork_rng(devices=[program.device] if program.device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                return program.sample(n)
        return program.sample(n, key=key)

    def posterior(self, program: Any, x: Any, num_samples: int, *, seed: int | None = None, key: Any = None) -> Any:
        """Draws of ``z | x``; for an invertible pushforward ``z = g^{-1}(x)`` exactly (repeated)."""
        z = program.invert(x)
        if program.engine == "pyro":
            return z[None].expand(num_samples, *z.shape)
        import jax.numpy as jnp

        return jnp.broadcast_to(z[None], (num_samples, *z.shape))


def _default_requires(cls: type[Backend]) -> frozenset[str]:
    try:
        return cls().required()
    except Exception:
        return cls.requires
