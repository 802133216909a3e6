"""What both engines share: the description of a program's sites, the ``Program`` protocol, and the
``Loop`` protocol that ``gm.fit`` drives.

A *program* is a user's Pyro or NumPyro model bound to its own parameters and device; both engines
implement :class:`Program` with the same names. A *loop* runs training steps in chunks on one engine
(a Python loop on torch, a jitted ``lax.scan`` on JAX, vmapped over chains); ``gm.fit`` owns
everything around it (progress, NaN handling, validation, callbacks, history).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: One engine call at a time, process-wide. Pyro's param store, both PPLs' effect-handler stacks and
#: torch's random state are globals, so fits and fitted models used from several threads take turns:
#: each gets its own parameters and the answer it would get alone (a fit holds the lock while it runs).
ENGINE_LOCK = threading.RLock()


_SHAPES_ONLY = threading.local()


@contextlib.contextmanager
def shapes_only() -> Any:
    """Run a program where only the shapes of its draws are read (model inspection's generating run): gmppl's
    ODE- and SDE-sampled distributions then check their network on abstract values and return zeros shaped as
    their draws instead of solving (on JAX the solve compiles for about a second, to be thrown away)."""
    previous = getattr(_SHAPES_ONLY, "on", False)
    _SHAPES_ONLY.on = True
    try:
        yield
    finally:
        _SHAPES_ONLY.on = previous


def reading_shapes() -> bool:
    """Whether the current run reads only the shapes of its draws (see :func:`shapes_only`)."""
    return getattr(_SHAPES_ONLY, "on", False)


def in_scope[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(program, ...)`` inside ``program.scope()``: what it reads of the program's modules, also from
    distributions traced inside it and used after, is the program's fitted values."""

    @functools.wraps(fn)
    def scoped(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0].scope():  # type: ignore[attr-defined]
            return fn(*args, **kwargs)

    return scoped


def serial[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` holding :data:`ENGINE_LOCK`."""

    @functools.wraps(fn)
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        with ENGINE_LOCK:
            return fn(*args, **kwargs)

    return locked


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

    ``capabilities`` is what backends check before step 1.
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
        d = self.obs_dist  # a ContinuousFlow, through the same wrappers
        while d is not None and not getattr(d, "gmppl_velocity_model", False):
            d = getattr(d, "base_dist", None)
        if d is not None:
            caps.add("velocity_field")
        return frozenset(caps)


class Program(Protocol):
    """A user's program bound to its parameters and a device; the same names on both engines.

    Arrays in and out are the engine's own (torch tensors, JAX arrays); ``as_array`` converts.
    """

    engine: str
    model: Any
    observed: str
    latent: str
    device: Any

    def inspect(self, example: Any) -> ModelInfo: ...

    def scope(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the program's own parameter values are in force (Pyro swaps them into the
        caller's modules; NumPyro's are arguments, so it does nothing)."""
        ...

    def as_array(self, x: Any) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, values: dict[str, Any]) -> None: ...

    def constrained_params(self) -> dict[str, Any]: ...

    def sample(self, n: int, *, seed: int | None = None) -> Any: ...

    def log_prob(self, x: Any) -> Any: ...

    def invert(self, x: Any) -> Any: ...


class Loop(Protocol):
    """Training steps of one engine for every chain of a fit, in chunks.

    ``metrics`` from ``run_chunk`` map a name to an array shaped ``(chains, k)``. ``snapshot`` holds
    the values to go back to (the last good or the best validated ones); ``finish`` writes the fitted
    values (the backend's: an average of iterates where it keeps one) into the programs.
    """

    chains: int

    def run_chunk(self, state: Any, k: int) -> tuple[Any, dict[str, Any]]: ...

    def snapshot(self, state: Any) -> Any: ...

    def restore(self, state: Any, snap: Any) -> Any: ...

    def finite(self, snap: Any) -> bool: ...

    def finish(self, state: Any) -> None: ...
