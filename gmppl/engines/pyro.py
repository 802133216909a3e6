"""The Pyro/torch engine: a user's Pyro program with its own parameter store, on one device.

A `PyroProgram` runs the program under Pyro's effect handlers inside a private
``ParamStore`` scope, so two fits never share parameters through the global store
(DESIGN.md). It exposes what backends need: the leaf tensors to optimise, generated
draws of the observed site, its per-example log-density, and site introspection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch

from gmppl.engines.base import ModelInfo, Trainer
from gmppl.engines.sites import check_event_shape, info_from_traces, invert_pushforward
from gmppl.errors import DataError, DeviceError, ModelError, NotSupported, TrainingError
from gmppl.optim import build_torch

# Which Fit last loaded its values into a shared leaf tensor (a module fitted twice).
_OWNER: dict[int, int] = {}


def torch_threads(device: torch.device) -> int | None:
    """Intra-op threads while a program runs: 1 on CPU unless ``GMPPL_TORCH_THREADS`` says otherwise.

    Measured on the 2-core CI machine (benchmarks/bench_flow.py, spline flow, batch 256): one thread
    ran 32 steps/s and two threads 4 steps/s while the other core was busy; with both cores idle two
    threads gave ~1.5x. Small generative models are dominated by many small ops, so one thread is the
    robust default; ``GMPPL_TORCH_THREADS=0`` keeps torch's own setting.
    """
    if device.type != "cpu":
        return None
    value = int(os.environ.get("GMPPL_TORCH_THREADS", "1"))
    return value or None


def resolve_device(device: Any) -> torch.device:
    """``None`` picks CUDA when there is one; otherwise the named device, checked to exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'.") from e
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceError(f"device={device!r}: no CUDA device is available here; use device='cpu'.")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device={device!r}: only {count} CUDA device(s) (0..{count - 1}).")
    elif dev.type not in ("cpu", "mps"):
        raise DeviceError(f"device={device!r} is not supported; use 'cpu' or 'cuda[:N]'.")
    return dev


#: The programs whose scope is open, innermost last (`PyroProgram.scope` is re-entrant for the innermost).
_ACTIVE: list[PyroProgram] = []


class PyroProgram:
    """A Pyro program ``model(x=None, n=None)`` bound to a private parameter store and a device."""

    engine = "pyro"

    def __init__(self, model: Callable, *, observed: str = "x", latent: str = "z", device: Any = None):
        self.model = model
        self.observed = observed
        self.latent = latent
        self.device = resolve_device(device)
        self.store: dict = {"params": {}, "constraints": {}}
        self._token = id(self)
        self._frozen: dict[str, torch.Tensor] | None = None
        self.extras: dict[str, Any] = {}  # what a backend adds (guide, critic modules), by name
        self.threads = torch_threads(self.device)

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Run inside this program's parameter store, on its device (re-entrant: a nested call, such as
        each training step's trace inside the trainer's scope, costs nothing)."""
        if _ACTIVE and _ACTIVE[-1] is self:
            yield
            return
        # torch.device(...) as a context intercepts every torch call in Python (a TorchFunctionMode,
        # ~2x slower steps for op-heavy flows): enter it only when the default device differs.
        on_device = contextlib.nullcontext() if self.device == torch.get_default_device() else torch.device(self.device)
        previous = torch.get_num_threads()
        if self.threads and previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            with pyro.get_param_store().scope(self.store), on_device:
                self._reclaim()
                _ACTIVE.append(self)
                try:
                    yield
                finally:
                    _ACTIVE.pop()
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def _reclaim(self) -> None:
        # A module shared with another fit: put this fit's values back before use.
        if self._frozen is None:
            return
        for name, value in self.store["params"].items():
            if _OWNER.get(id(value)) != self._token and name in self._frozen:
                with torch.no_grad():
                    value.copy_(self._frozen[name])
                _OWNER[id(value)] = self._token

    def freeze(self) -> None:
        """Snapshot parameter values, so later fits of the same modules cannot change this one."""
        params = self.store["params"]
        self._frozen = {k: v.detach().clone() for k, v in params.items()}
        for v in params.values():
            _OWNER[id(v)] = self._token

    def trace(self, x: torch.Tensor | None = None, n: int | None = None) -> poutine.Trace:
        """Pyro trace of one run: conditioned on ``x``, or generating ``n`` draws."""
        with self.scope():
            return poutine.trace(self.model).get_trace(x=x, n=n)

    def as_tensor(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(self.device)
        return torch.as_tensor(np.asarray(x), device=self.device)

    # ------------------------------------------------------------------ parameters
    def params(self) -> dict[str, torch.Tensor]:
        """Unconstrained leaf tensors of every ``pyro.param``/``pyro.module`` seen so far, by name."""
        return dict(self.store["params"])

    def move_params(self) -> None:
        """Move every parameter to this program's device once (in place, as ``Module.to`` does)."""
        for value in self.store["params"].values():
            if value.device != self.device:
                value.data = value.data.to(self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.store["params"].items()}

    def load_state_dict(self, values: dict[str, Any]) -> None:
        params = self.store["params"]
        with torch.no_grad():
            for k, v in values.items():
                params[k].copy_(torch.as_tensor(v, device=self.device, dtype=params[k].dtype))
        self.freeze()

    # ------------------------------------------------------------------ introspection
    def inspect(self, example: np.ndarray) -> ModelInfo:
        """Find the roles of the program's sites by running it (conditioned and generating)."""
        x = self.as_tensor(example)
        try:
            gen = self.trace(x=None, n=2)
            check_event_shape(gen.nodes, self.observed, example)
            cond = self.trace(x=x, n=None)
        except (NotSupported, DataError):
            raise
        except Exception as e:
            raise ModelError(
                f"running the Pyro program failed: {type(e).__name__}: {e}. gmppl calls it as "
                "model(x=batch) and model(x=None, n=k); check it accepts those arguments."
            ) from e
        self.move_params()
        return info_from_traces(cond, gen, self.observed, self.latent, len(example), "pyro")

    # ------------------------------------------------------------------ quantities
    def sample(self, n: int, *, grad: bool = False) -> torch.Tensor:
        """``n`` generated values of the observed site (differentiable when ``grad``)."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            tr = self.trace(x=None, n=n)
        return tr.nodes[self.observed]["value"]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example ``log p(x_i)`` of the observed site (models with a density, no latents)."""
        tr = self.trace(x=x, n=None)
        site = tr.nodes[self.observed]
        lp = site["fn"].log_prob(site["value"])
        return lp.reshape(lp.shape[0], -1).sum(-1) if lp.dim() > 1 else lp

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """``z = g^{-1}(x)`` for an observed site that is an invertible pushforward (a flow)."""
        with torch.no_grad():
            site = self.trace(x=x, n=None).nodes[self.observed]
            return invert_pushforward(site["fn"], site["value"])


# ---------------------------------------------------------------------- the loop
class TorchTrainer(Trainer):
    """The torch training loop: shuffled minibatches on device (epochs without replacement), NaN checks
    every ``check_every`` steps (one host sync), and a snapshot of the last good parameters."""

    check_every = 25

    def run(
        self,
        program: PyroProgram,
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
        torch.manual_seed(seed)
        pyro.set_rng_seed(seed)
        gen = torch.Generator(device=program.device).manual_seed(seed)
        x = program.as_tensor(data)
        n = x.shape[0]
        with program.scope():
            state = backend.torch_init(program, x[: min(n, batch_size)], optim)
            rows: list[dict[str, torch.Tensor]] = []
            good = _snapshot(program, state)
            perm, offset = torch.arange(n, device=program.device), n
            for t in range(steps):
                if offset + batch_size > n:  # a new epoch: a fresh permutation (tail skipped)
                    perm, offset = torch.randperm(n, device=program.device, generator=gen), 0
                batch = x if batch_size == n else x[perm[offset : offset + batch_size]]
                offset += batch_size
                state, metrics = backend.torch_step(state, batch)
                rows.append(metrics)
                if (t + 1) % self.check_every == 0 or t + 1 == steps:
                    losses = torch.stack([r["loss"] for r in rows[-self.check_every :]]).detach()
                    if not torch.isfinite(losses).all():
                        bad = len(rows) - len(losses) + int((~torch.isfinite(losses)).nonzero()[0])
                        _restore(program, state, good)
                        program.freeze()
                        raise TrainingError(
                            f"the loss became {float(losses[bad - len(rows) + len(losses)])} at step {bad}; "
                            f"parameters were restored to step {t + 1 - len(losses)}. Lower the learning rate "
                            "(optim=gm.optim.Adam(lr=...)), clip gradients (Adam(clip_norm=...)) or check the model."
                        )
                    good = _snapshot(program, state)
                    progress.update(t + 1, float(losses[-1]))
                    for cb in callbacks:
                        cb(t + 1, {k: float(v) for k, v in metrics.items()})
            backend.torch_finish(state)
        program.freeze()
        history = {k: torch.stack([torch.as_tensor(r[k]) for r in rows]).detach().cpu().numpy() for k in rows[0]}
        return state, history


def _snapshot(program: PyroProgram, state: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in program.store["params"].items()}


def _restore(program: PyroProgram, state: Any, snap: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in program.store["params"].items():
            v.copy_(snap[k])


def gradient_step(loss: torch.Tensor, optimizer: Any, params: list[torch.Tensor]) -> torch.Tensor:
    """One optimiser step on ``loss``; returns the gradient's global norm (a 0-d tensor)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
    optimizer.step()
    return norm.detach()


def make_optimizer(optim: Any, params: list[torch.Tensor]) -> Any:
    return build_torch(optim, params)
