"""Exact maximum likelihood: ``theta* = argmax sum_i log p_theta(x_i)``, i.e. min forward KL(P_X || P_theta)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from gmppl.inference.base import Backend


@dataclass(frozen=True)
class LikelihoodPlan:
    """Per fit: the torch engine's traced log-density graphs, one per batch shape (None where refused)."""

    graphs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Likelihood(Backend):
    """Maximise the exact log-likelihood of the observed site.

    Needs a tractable density and no unobserved latents: flows written with
    ``gm.models.Pushforward(prior, invertible_g)``, or fully observed models (PPCA with
    ``z`` integrated analytically). The loss is the mean negative log-likelihood per example,
    ``-(1/B) sum_i log p_theta(x_i)``, an unbiased minibatch estimate of the cross-entropy
    ``KL(P_X || P_theta) + H(P_X)``.

    ``jit``: on the torch engine, run the log-density as a graph traced once per batch shape
    (``gmppl.engines.pyro.compiled_log_prob``: the same torch ops without Pyro's handlers, checked
    against them before use; a program whose trace would differ runs through the handlers). On JAX
    the loss is always compiled, inside the engine's ``lax.scan``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"density"})
    jit: bool = True

    def prepare(
        self, program: Any, info: Any, example: Any, *, seed: int, inputs: dict | None = None
    ) -> LikelihoodPlan:
        return LikelihoodPlan()

    def torch_loss(self, program: Any, plan: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        return -self._torch_log_prob(program, plan, batch, inputs).mean(), {}

    def _torch_log_prob(self, program: Any, plan: Any, batch: Any, inputs: dict | None) -> Any:
        if not self.jit or plan is None:
            return program.log_prob(batch, inputs)
        rows = inputs or {}
        key = tuple((k, v.shape, v.dtype) for k, v in {"": batch, **rows}.items())
        if key not in plan.graphs:
            from gmppl.engines.pyro import compiled_log_prob

            with program.scope():
                plan.graphs[key] = compiled_log_prob(program, batch, rows)
        graph = plan.graphs[key]
        return graph(batch, *rows.values()) if graph is not None else program.log_prob(batch, inputs)

    def jax_loss(self, program: Any, plan: Any) -> Any:
        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            return -program.log_prob_fn(params, batch, None, inputs).mean(), {}

        return loss
