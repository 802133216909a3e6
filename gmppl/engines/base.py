"""What both engines share: the description of a program's sites, and the trainer protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SiteInfo:
    """One site of a traced program."""

    name: str
    kind: str  # "sample" | "deterministic" | "param"
    observed: bool
    shape: tuple[int, ...]
    fn: Any
    has_log_prob: bool
    reparameterized: bool


@dataclass(frozen=True)
class ModelInfo:
    """The roles of a program's sites, found by running it with the PPL's own handlers.

    ``capabilities`` is what backends check before step 1 (STYLE.md practice 3).
    """

    engine: str
    observed: str
    latent: str | None
    latents: tuple[str, ...]
    unobserved_when_conditioned: tuple[str, ...]
    x_event_shape: tuple[int, ...]
    z_event_shape: tuple[int, ...] | None
    implicit: bool
    conditioned: bool
    reparameterized: bool
    has_log_prob: bool
    params: tuple[str, ...]
    obs_dist: Any = None

    @property
    def capabilities(self) -> frozenset[str]:
        caps = set()
        if self.has_log_prob and self.conditioned and not self.unobserved_when_conditioned:
            caps.add("density")
        if self.has_log_prob and self.conditioned and self.latents:
            caps.add("observation_model")
        if self.latents:
            caps.add("latent")
        if self.reparameterized:
            caps.add("reparameterized_sample")
        d = self.obs_dist  # through Independent/Masked/Expanded wrappers
        while d is not None and not getattr(d, "gmppl_score_model", False):
            d = getattr(d, "base_dist", None)
        if d is not None:
            caps.add("score_network")
        return frozenset(caps)


class Progress(Protocol):
    def update(self, step: int, loss: float) -> None: ...


class Trainer(Protocol):
    def run(
        self,
        program: Any,
        backend: Any,
        data: Any,
        *,
        steps: int,
        batch_size: int,
        seed: int,
        optim: Any,
        callbacks: tuple,
        progress: Any,
    ) -> tuple[Any, dict]: ...
