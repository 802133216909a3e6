"""Exact maximum likelihood: ``theta* = argmax sum_i log p_theta(x_i)``, i.e. min forward KL(P_X || P_theta)."""

from __future__ import annotations

from typing import Any, ClassVar

from gmppl.inference.base import Backend


class Likelihood(Backend):
    """Maximise the exact log-likelihood of the observed site.

    Needs a tractable density and no unobserved latents: flows written with
    ``gm.models.Pushforward(prior, invertible_g)``, or fully observed models (PPCA with
    ``z`` integrated analytically). The loss is the mean negative log-likelihood per example,
    ``-(1/B) sum_i log p_theta(x_i)``, an unbiased minibatch estimate of the cross-entropy
    ``KL(P_X || P_theta) + H(P_X)``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"density"})

    def torch_loss(self, program: Any, plan: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        nll = -program.log_prob(batch, inputs).mean()
        return nll, {}

    def jax_loss(self, program: Any, plan: Any) -> Any:
        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            return -program.log_prob_fn(params, batch, None, inputs).mean(), {}

        return loss
