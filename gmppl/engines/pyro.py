"""The Pyro/torch engine: a user's Pyro program with its own parameter store, on one device.

A `PyroProgram` runs the program under Pyro's effect handlers inside a private
``ParamStore`` scope, so two fits never share parameters through the global store
(``docs/design.md``, "Concepts"). It exposes what backends need: the leaf tensors to optimise, generated
draws of the observed site, its per-example log-density, and site introspection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.params.param_store import StateDict

from gmppl.engines import distributed
from gmppl.engines.base import ENGINE_LOCK, ModelInfo, shapes_only
from gmppl.engines.calls import Call, make_call
from gmppl.engines.sites import (
    Site,
    check_event_shape,
    check_per_example,
    check_support,
    info_from_traces,
    invert_pushforward,
)
from gmppl.errors import CheckpointError, DataError, DeviceError, ModelError, NotSupported
from gmppl.optim import build_torch

# One program's scope at a time: the param store, the default device, torch's thread count and the values
# swapped into the caller's modules are all global.
_LOCK = ENGINE_LOCK


def torch_threads(device: torch.device) -> int | None:
    """Intra-op threads while a program runs: 1 on CPU unless ``GMPPL_TORCH_THREADS`` says otherwise.

    Small generative models are dominated by many small ops: a second thread gains little on an idle
    machine and loses most of the speed when another process holds a core, so one thread is the robust
    default (``benchmarks/bench_flow.py`` times both; the numbers are in the README's benchmarks).
    ``GMPPL_TORCH_THREADS=0`` keeps torch's own setting.
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

    def __init__(
        self, model: Callable, *, observed: str = "x", latent: str = "z", device: Any = None, call: Call | None = None
    ):
        self.model = model
        self.call = call if call is not None else make_call(model, observed)
        self.fn = self.call.bind(model)  # the program as fn(x=None, n=None, **inputs)
        self.observed = observed
        self.latent = latent
        self.device = resolve_device(device)
        self.store: StateDict = {"params": {}, "constraints": {}}
        self._values: dict[str, torch.Tensor] = {}  # this program's values of leaves it shares with the caller
        self._owned: set[int] = set()  # leaves of modules gmppl built for this program (``adopt``)
        self.threads = torch_threads(self.device)

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Run inside this program's parameter store, on its device, with this program's parameter values.

        A ``pyro.module`` registers the caller's own ``nn.Parameter`` tensors, so the program keeps its values
        apart and swaps them in for the scope and the caller's back out after it: a fit never trains the
        caller's module in place, two fits of one module object start from the same weights, and the chains
        of an ensemble sharing a module each keep their own. Re-entrant for the innermost program (each
        training step's trace inside the trainer's scope costs nothing); thread-safe by taking turns.
        """
        if _ACTIVE and _ACTIVE[-1] is self:
            yield
            return
        # torch.device(...) as a context intercepts every torch call in Python (a TorchFunctionMode, which
        # slows op-heavy flows' steps): enter it only when the default device differs.
        on_device = contextlib.nullcontext() if self.device == torch.get_default_device() else torch.device(self.device)
        with _LOCK:
            previous = torch.get_num_threads()
            if self.threads and previous != self.threads:
                torch.set_num_threads(self.threads)
            try:
                with pyro.get_param_store().scope(self.store), on_device:
                    callers = self._swap_in()
                    _ACTIVE.append(self)
                    try:
                        yield
                    finally:
                        _ACTIVE.pop()
                        self._swap_out(callers)
            finally:
                if torch.get_num_threads() != previous:
                    torch.set_num_threads(previous)

    def _swap_in(self) -> dict[str, torch.Tensor]:
        """Put this program's values into its leaf tensors; return what they held (the caller's values)."""
        callers: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, value in self.store["params"].items():
                mine = self._values.get(name)
                if mine is not None and mine is not value:
                    callers[name] = value.detach().clone()
                    value.copy_(mine)
        return callers

    def _swap_out(self, callers: dict[str, torch.Tensor]) -> None:
        """Keep this program's values and give the caller's back. A parameter first registered in this scope
        holds the caller's value still (registration does not train), so it becomes this program's value
        and stays; a leaf the program created itself (``pyro.param`` with an initial value, a guide) is its
        own and is kept by reference, with no copy."""
        with torch.no_grad():
            for name, value in self.store["params"].items():
                if name in callers:
                    self._values[name] = value.detach().clone()
                    value.copy_(callers[name])
                elif name not in self._values:
                    self._values[name] = value.detach().clone() if self._shared(value) else value
                elif self._values[name] is not value:
                    self._values[name] = value.detach().clone()

    def _shared(self, value: torch.Tensor) -> bool:
        """Whether a leaf may be the caller's: a module's ``nn.Parameter`` that gmppl did not build."""
        return isinstance(value, torch.nn.Parameter) and id(value) not in self._owned

    def adopt(self, name: str, module: torch.nn.Module) -> None:
        """Register a module gmppl built for this program (a critic) as ``pyro.module(name, module)``: its
        values live in the module itself, which only this program uses."""
        self._owned.update(id(p) for p in module.parameters())
        with self.scope():
            pyro.module(name, module)

    def trace(self, x: torch.Tensor | None = None, n: int | None = None, inputs: dict | None = None) -> poutine.Trace:
        """Pyro trace of one run: conditioned on ``x``, or generating ``n`` draws.

        ``x`` goes in as a fresh view: a transform's one-entry cache (``x = g(z)`` and back) matches
        tensors by identity, so the same tensor twice would return the inverse computed under the old
        parameters (and its old graph: "backward through the graph a second time" at full batch).
        """
        if x is not None:
            x = x.view_as(x)
        rows = self.as_inputs(inputs)
        if x is None and n is None and rows:
            n = len(next(iter(rows.values())))
        with self.scope():
            return poutine.trace(self.fn).get_trace(x=x, n=n, **rows)

    def as_array(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor on this program's device; floating values in the dtype of the program's floating
        parameters, once it has any (numpy's float64 or float16 data into float32 modules would fail deep in
        torch with "mat1 and mat2 must have the same dtype"). Integer and boolean arrays keep their dtype."""
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if t.is_floating_point():
            dtype = next((v.dtype for v in self.store["params"].values() if v.is_floating_point()), t.dtype)
            return t.to(device=self.device, dtype=dtype)
        return t.to(self.device)

    def as_inputs(self, inputs: dict | None) -> dict[str, torch.Tensor]:
        """Inputs as tensors on this program's device (integer labels keep their dtype)."""
        if not inputs:
            return {}
        return {
            k: v if isinstance(v, torch.Tensor) and v.device == self.device else self.as_array(v)
            for k, v in inputs.items()
        }

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
        """This program's parameter values (copies: a module shared with another fit holds that fit's values
        outside this program's scope)."""
        with self.scope():
            return {k: v.detach().clone() for k, v in self.store["params"].items()}

    def constrained_params(self) -> dict[str, torch.Tensor]:
        """Every parameter as ``pyro.param(name)`` returns it inside the program (constrained)."""
        from torch.distributions import constraints, transform_to

        out = {}
        with self.scope():  # this fit's values, also where a module is shared with another fit
            for name, value in self.store["params"].items():
                c = self.store["constraints"].get(name, constraints.real)
                out[name] = (value if c is constraints.real else transform_to(c)(value)).detach().clone()
        return out

    def write_back(self) -> None:
        """Copy this program's values into the caller's modules (``Fit.write_back``)."""
        with torch.no_grad():
            for name, value in self.store["params"].items():
                mine = self._values.get(name)
                if mine is not None and mine is not value:
                    value.copy_(mine)

    def load_state_dict(self, values: dict[str, Any]) -> None:
        params = self.store["params"]
        with torch.no_grad(), self.scope():
            for k, v in values.items():
                params[k].copy_(torch.as_tensor(v, device=self.device, dtype=params[k].dtype))

    # ------------------------------------------------------------------ introspection
    def inspect(self, example: np.ndarray, inputs: dict | None = None) -> ModelInfo:
        """Find the roles of the program's sites by running it (conditioned and generating)."""
        x = self.as_array(example)
        try:
            with shapes_only():  # its values are not read: ODE/SDE draws are not solved
                gen = self.trace(x=None, n=2, inputs=_head(inputs, 2))
            check_event_shape(gen.nodes, self.observed, example)
            cond = self.trace(x=x, n=None, inputs=inputs)
            check_support(cond.nodes, self.observed, example)
            check_per_example(cond.nodes, self.observed, len(example))
        except (NotSupported, DataError, ModelError):
            raise
        except Exception as e:
            raise ModelError(
                f"running the Pyro program failed: {type(e).__name__}: {e}. gmppl calls it as "
                "the program with its data (or None to generate) and inputs by keyword; check it accepts them."
                + self.call.hint()
            ) from e
        self.move_params()
        return info_from_traces(cond, gen, self.observed, self.latent, len(example), "pyro")

    # ------------------------------------------------------------------ quantities
    def generate(self, n: int | None, *, grad: bool = False, inputs: dict | None = None) -> torch.Tensor:
        """``n`` generated values of the observed site from torch's current random state (differentiable
        when ``grad``): what training steps draw."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            tr = self.trace(x=None, n=n, inputs=inputs)
        site: Site = tr.nodes[self.observed]
        return site["value"]

    def sample(self, n: int | None, *, seed: int | None = None, inputs: dict | None = None) -> torch.Tensor:
        """``n`` generated values of the observed site; ``seed`` fixes them without touching torch's global
        random state (None: fresh draws)."""
        with self.seeded(seed):
            return self.generate(n, inputs=inputs)

    def run(
        self, n: int, *, seed: int | None = None, given: dict[str, Any] | None = None, inputs: dict | None = None
    ) -> dict[str, dict]:
        """One run generating ``n`` examples with the sites in ``given`` fixed: each sample site's ``value`` and
        ``log_prob`` (summed over its event), as numpy."""
        model = self.fn
        if given:
            data = {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in given.items()}
            model = poutine.condition(model, data=data)
        with self.seeded(seed), torch.no_grad(), self.scope():
            nodes: Mapping[str, Site] = poutine.trace(model).get_trace(x=None, n=n, **self.as_inputs(inputs)).nodes
            out = {}
            for name, site in nodes.items():
                if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
                    continue
                lp = site["fn"].log_prob(site["value"])
                out[name] = {"value": site["value"].cpu().numpy(), "log_prob": lp.cpu().numpy()}
        return out

    @contextlib.contextmanager
    def seeded(self, seed: int | None) -> Iterator[None]:
        """Run with torch's random state seeded by ``seed`` and restored afterwards (None: fresh entropy)."""
        devices = [self.device] if self.device.type == "cuda" else []
        with _LOCK, torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is None else int(seed))
            yield

    def log_prob(self, x: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
        """Per-example ``log p(x_i)`` of the observed site (models with a density, no latents)."""
        tr = self.trace(x=x, n=None, inputs=inputs)
        site: Site = tr.nodes[self.observed]
        lp = site["fn"].log_prob(site["value"])
        return lp.reshape(lp.shape[0], -1).sum(-1) if lp.dim() > 1 else lp

    def invert(self, x: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
        """``z = g^{-1}(x)`` for an observed site that is an invertible pushforward (a flow)."""
        with torch.no_grad():
            site = self.trace(x=x, n=None, inputs=inputs).nodes[self.observed]
            return invert_pushforward(site["fn"], site["value"])


def _head(inputs: dict | None, k: int) -> dict | None:
    return None if not inputs else {name: v[:k] for name, v in inputs.items()}


# ---------------------------------------------------------------------- the loop
class TorchLoop:
    """Training steps on torch: a Python loop over shuffled on-device minibatches, chain after chain.

    Each chain keeps its own torch random state (restored before and saved after its steps), so the
    chains of an ensemble draw the streams they would draw alone. Minibatches walk a fresh permutation
    of the data each epoch (the tail that does not fill a batch is skipped that epoch).
    """

    chunk = 100

    def __init__(
        self,
        programs: list[PyroProgram],
        backend: Any,
        plans: list,
        data: Any,
        *,
        batch_size: int,
        steps: int,
        inputs: dict | None = None,
    ):
        self.programs, self.backend, self.plans = programs, backend, plans
        self.chains = len(programs)
        self.batch_size = batch_size
        self.x = programs[0].as_array(data)
        self.inputs = programs[0].as_inputs(inputs)  # moved to the device once, minibatched with the data
        self.devices = [programs[0].device] if programs[0].device.type == "cuda" else []
        self.world = distributed.current()  # under torchrun: this rank's slice of each batch, averaged gradients
        if self.world is not None and batch_size % self.world.size:
            raise DeviceError(
                f"batch_size={batch_size} does not split over {self.world.size} processes: batch_size is the global "
                f"batch, so make it a multiple of {self.world.size}."
            )

    def init(self, seeds: list[int], optim: Any) -> list[dict[str, Any]]:
        n, b = self.x.shape[0], self.batch_size
        state = []
        for program, plan, seed in zip(self.programs, self.plans, seeds, strict=True):
            noise = seed if self.world is None else self.world.seed(seed)
            with _LOCK, torch.random.fork_rng(devices=self.devices):  # torch's random state is global too
                torch.manual_seed(noise)
                pyro.set_rng_seed(noise)
                with program.scope():
                    head = {k: v[: min(n, b)] for k, v in self.inputs.items()}
                    step_state = self.backend.torch_init(program, plan, self.x[: min(n, b)], head, optim)
                    if self.world is not None:  # rank 0's start on every rank; the mean gradient at every step
                        distributed.broadcast([*program.params().values(), *self.backend.torch_tensors(step_state)])
                        for opt in self.backend.torch_optimizers(step_state):
                            distributed.average_gradients(opt)
                rng = _rng_state(self.devices)
            state.append(
                {
                    "step": step_state,
                    "rng": rng,
                    "gen": torch.Generator(device=program.device).manual_seed(seed),
                    "perm": torch.arange(n, device=program.device),
                    "offset": n,  # the first step draws a fresh permutation
                }
            )
        return state

    def run_chunk(
        self, state: list[dict[str, Any]], k: int, start: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        x, b = self.x, self.batch_size
        n = x.shape[0]
        out: list[dict[str, np.ndarray]] = []
        for program, chain in zip(self.programs, state, strict=True):
            rows: list[dict[str, torch.Tensor]] = []
            with _LOCK, torch.random.fork_rng(devices=self.devices):
                _set_rng_state(chain["rng"], self.devices)
                with program.scope():
                    for _ in range(k):
                        if chain["offset"] + b > n:  # a new epoch
                            chain["perm"] = torch.randperm(n, device=program.device, generator=chain["gen"])
                            chain["offset"] = 0
                        o = chain["offset"]
                        if b == n and self.world is None:
                            batch, given = x, self.inputs
                        else:
                            idx = chain["perm"][o : o + b] if b < n else chain["perm"]
                            if self.world is not None:  # this rank's rows of the global batch
                                idx = idx[self.world.slice(b)]
                            batch, given = x[idx], {k: v[idx] for k, v in self.inputs.items()}
                        chain["offset"] = o + b
                        try:
                            chain["step"], metrics = self.backend.torch_step(chain["step"], batch, given)
                        except ValueError as e:  # a distribution's argument check on NaN parameters
                            if "Expected parameter" not in str(e):
                                raise
                            rows.append({"loss": torch.tensor(float("nan"))})
                            break
                        rows.append(metrics)
                chain["rng"] = _rng_state(self.devices)
            out.append(_stack(rows, k))
        metrics = {name: np.stack([o.get(name, np.full(k, np.nan)) for o in out]) for name in out[0]}
        if self.world is not None:  # the global batch's loss: the mean of the ranks' (equal) slices
            metrics = {name: distributed.mean(v) for name, v in metrics.items()}
        return state, metrics

    def snapshot(self, state: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "params": program.state_dict(),
                "extra": [t.detach().clone() for t in self.backend.torch_tensors(chain["step"])],
            }
            for program, chain in zip(self.programs, state, strict=True)
        ]

    def finite(self, snap: list[dict[str, Any]]) -> bool:
        """Whether every floating tensor of a snapshot (parameters, optimiser moments, averages) is finite."""
        flags = [
            torch.isfinite(t).all() for s in snap for t in (*s["params"].values(), *s["extra"]) if t.is_floating_point()
        ]
        return bool(torch.stack(flags).all()) if flags else True

    def restore(self, state: list[dict[str, Any]], snap: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for program, chain, saved in zip(self.programs, state, snap, strict=True):
            with torch.no_grad(), program.scope():
                for k, v in program.store["params"].items():
                    v.copy_(saved["params"][k])
                tensors = self.backend.torch_tensors(chain["step"])
                if tensors:
                    torch._foreach_copy_(tensors, saved["extra"])
        return state

    def to_arrays(self, state: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything the next step needs, as named arrays and JSON: parameters, every optimiser's state, averaged
        iterates, the data order and position, the random states (torch's and the permutation generator's)."""
        arrays: dict[str, np.ndarray] = {}
        meta: list[dict[str, Any]] = []
        for c, (program, chain) in enumerate(zip(self.programs, state, strict=True)):
            p = f"chain{c}/"
            for name, v in program.state_dict().items():
                arrays[p + "param/" + name] = _numpy(v)
            for i, t in enumerate(self.backend.torch_tensors(chain["step"])):
                arrays[p + f"extra/{i}"] = _numpy(t)
            groups = []
            for j, opt in enumerate(self.backend.torch_optimizers(chain["step"])):
                sd = opt.state_dict()
                scalars: dict[str, Any] = {}
                for idx, st in sd["state"].items():
                    for key, val in st.items():
                        if isinstance(val, torch.Tensor):
                            arrays[p + f"opt{j}/{idx}/{key}"] = _numpy(val)
                        else:
                            scalars[f"{idx}/{key}"] = val
                groups.append({"param_groups": sd["param_groups"], "scalars": scalars})
            for i, r in enumerate(chain["rng"]):
                arrays[p + f"rng/{i}"] = _numpy(r)
            if self.world is not None:  # every rank's noise stream (rank 0's is the one above)
                for rank, states in enumerate(distributed.gather([_numpy(r) for r in chain["rng"]])):
                    for i, r in enumerate(states if rank else []):
                        arrays[p + f"rank{rank}/rng/{i}"] = r
            arrays[p + "gen"] = _numpy(chain["gen"].get_state())
            arrays[p + "perm"] = _numpy(chain["perm"])
            meta.append(
                {
                    "offset": int(chain["offset"]),
                    "optimizers": groups,
                    "counters": self.backend.torch_counters(chain["step"]),
                }
            )
        return arrays, {"chains": meta}

    def from_arrays(
        self, state: list[dict[str, Any]], arrays: dict[str, np.ndarray], meta: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Load ``to_arrays``'s output into a freshly initialised ``state`` (same model, backend and settings)."""
        for c, (program, chain, info) in enumerate(zip(self.programs, state, meta["chains"], strict=True)):
            p = f"chain{c}/"
            params = program.store["params"]
            saved = {k[len(p + "param/") :] for k in arrays if k.startswith(p + "param/")}
            if saved != set(params):
                raise CheckpointError(
                    f"the checkpoint's parameters {sorted(saved ^ set(params))[:5]} differ from this fit's: it is "
                    "another model's checkpoint."
                )
            with torch.no_grad(), program.scope():
                for name, v in params.items():
                    a = arrays[p + "param/" + name]
                    if tuple(a.shape) != tuple(v.shape):
                        raise CheckpointError(
                            f"parameter {name!r} is {a.shape} in the checkpoint, {tuple(v.shape)} here."
                        )
                    v.copy_(torch.as_tensor(a, device=v.device, dtype=v.dtype))
                for i, t in enumerate(self.backend.torch_tensors(chain["step"])):
                    t.copy_(torch.as_tensor(arrays[p + f"extra/{i}"], device=t.device, dtype=t.dtype))
            for j, opt in enumerate(self.backend.torch_optimizers(chain["step"])):
                saved_opt = info["optimizers"][j]
                st: dict[int, dict[str, Any]] = {}
                prefix = p + f"opt{j}/"
                for key, a in arrays.items():
                    if key.startswith(prefix):
                        idx, name = key[len(prefix) :].split("/", 1)
                        st.setdefault(int(idx), {})[name] = torch.as_tensor(a)
                for key, val in saved_opt["scalars"].items():
                    idx, name = key.split("/", 1)
                    st.setdefault(int(idx), {})[name] = val
                opt.load_state_dict({"state": st, "param_groups": saved_opt["param_groups"]})
            self.backend.torch_set_counters(chain["step"], info["counters"])
            own = f"rank{self.world.rank}/" if self.world is not None and self.world.rank else ""
            missing = [i for i in range(len(chain["rng"])) if p + f"{own}rng/{i}" not in arrays]
            if missing:
                raise CheckpointError(
                    f"the checkpoint holds no random state for rank {self.world.rank if self.world else 0}: it was "
                    "written by a fit with fewer processes; resume with the world size it was written with."
                )
            chain["rng"] = [torch.as_tensor(arrays[p + f"{own}rng/{i}"]) for i in range(len(chain["rng"]))]
            chain["gen"].set_state(torch.as_tensor(arrays[p + "gen"]))
            chain["perm"] = torch.as_tensor(arrays[p + "perm"], device=program.device)
            chain["offset"] = int(info["offset"])
        return state

    def evaluate(self, state: list[dict[str, Any]], fn: Callable[[Any, Any], Any]) -> list[Any]:
        """``fn(program, plan)`` per chain at the fitted values (e.g. a generator's average), then back."""
        out = []
        for program, plan, chain in zip(self.programs, self.plans, state, strict=True):
            with program.scope(), self.backend.torch_fitted(chain["step"]):
                out.append(fn(program, plan))
        return out

    def finish(self, state: list[dict[str, Any]]) -> None:
        for program, chain in zip(self.programs, state, strict=True):
            with program.scope():
                self.backend.torch_finish(chain["step"])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy().copy()


def _stack(rows: list[dict[str, torch.Tensor]], k: int) -> dict[str, np.ndarray]:
    """Per-step metric tensors to numpy (one device sync per metric), padded with NaN to ``k`` steps."""
    names = {name for r in rows for name in r}
    out = {}
    for name in names:
        col = [r.get(name) for r in rows]
        if all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in col):  # one stack and one copy to the host
            vals = torch.stack(col).detach().float().cpu()  # type: ignore[arg-type]
        else:
            vals = torch.stack([torch.as_tensor(r.get(name, float("nan"))).detach().float().cpu() for r in rows])
        arr = vals.numpy().astype(np.float64)
        out[name] = np.concatenate([arr, np.full(k - len(arr), np.nan)]) if len(arr) < k else arr
    return out


def _rng_state(devices: list) -> list[torch.Tensor]:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in devices)]


def _set_rng_state(states: list[torch.Tensor], devices: list) -> None:
    torch.set_rng_state(states[0])
    for d, s in zip(devices, states[1:], strict=True):
        torch.cuda.set_rng_state(s, d)


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


# the tracer's warnings that a tensor's value was read in Python (a branch, a size, a loop taken from a draw)
_VALUE_READ = ("Converting a tensor to a Python", "Iterating over a tensor")


def compiled_generate(program: PyroProgram, n: int) -> Callable[[], torch.Tensor] | None:
    """``program.generate(n, grad=True)`` as a traced graph (``pyro.ops.jit``), or None where it would differ.

    Running the program through Pyro's effect handlers costs a small generator about as much as its own
    forward pass (``pyro.module`` looks each parameter up through the handler stack, the sample and plate
    sites build their messages); the traced graph runs the same torch ops, random draws included, with the
    parameter tensors looked up once. Checked on two draws from other seeds than the trace's, which must
    reproduce the handlers' values exactly (draws outside torch would not); see ``traced``. Call it inside
    the program's scope.
    """
    return traced(lambda: program.generate(n, grad=True), [(), ()], program)


def compiled_log_prob(program: PyroProgram, x: torch.Tensor, inputs: dict | None = None) -> Callable | None:
    """``program.log_prob`` as a traced graph ``run(x, *input_values)`` for batches shaped as ``x`` (and
    ``inputs``, passed by position in their order), or None where it would differ.

    A flow's log-density re-run through Pyro's handlers pays for ``pyro.module``'s parameter lookups and the
    distribution's and plate's messages on every step; the graph runs only the torch ops. Checked on the batch
    reversed (not the one traced; the inputs reversed with it) and on the model's own draws (which reach where
    the data may not, e.g. a spline's tails): both must give the handlers' values; see ``traced``. Call it
    inside the program's scope.
    """
    names = tuple(inputs or {})

    def log_prob(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return program.log_prob(x, dict(zip(names, values, strict=True)))

    args = (x, *(inputs or {}).values())
    checks = [tuple(a.flip(0) for a in args)]
    try:  # and the model's own draws, which reach where the data do not (a spline's tails)
        checks.append((program.sample(len(x), seed=0, inputs=inputs), *args[1:]))
    except Exception:  # a program that cannot generate at this batch: the reversed batch only
        pass
    return traced(log_prob, checks, program, args)


def traced(fn: Callable, checks: list[tuple], program: PyroProgram, args: tuple = ()) -> Callable | None:
    """``fn(*args)`` (a function of the program's parameters and tensor arguments) as a graph traced by
    ``pyro.ops.jit`` on ``args``, run with the parameter tensors looked up once (the optimiser, restores and
    loads update them in place), or None where the graph would not be ``fn``.

    It is refused where the tracer warns that a tensor was read as a Python value outside Pyro and torch (a
    branch or a size taken from a value: the trace would hold one case), and where, for an argument tuple in
    ``checks`` (run from seed 1, 2, ...; the trace from seed 0), the graph's value is not ``fn``'s (to float
    rounding).
    The trace and checks run under a forked random state, so the caller's stream is untouched. Should the graph
    still fail on a later call (a shape it baked in), that call and every later one run ``fn``.
    """
    import warnings

    devices = [program.device] if program.device.type == "cuda" else []
    compiled = pyro.ops.jit.trace(fn, ignore_warnings=False)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=devices):
            warnings.simplefilter("always")
            torch.manual_seed(0)
            compiled(*args)
            if any(str(w.message).startswith(_VALUE_READ) and not _library(w.filename) for w in caught):
                return None  # a tensor read as a Python value (a branch, a size): the trace holds one case only
            (graph,) = compiled.compiled.values()
            params = tuple(pyro.param(name).unconstrained() for name in compiled._param_names)  # type: ignore[attr-defined]

            def graph_run(*args: Any) -> torch.Tensor:
                with torch.jit.optimized_execution(False):  # autograd over the ops, as eager (see elbo._Compiled)
                    return graph(*params, *args)

            for seed, check in enumerate(checks, 1):
                torch.manual_seed(seed)
                eager = fn(*check)
                torch.manual_seed(seed)
                same = graph_run(*check)
                if not (same.shape == eager.shape and same.dtype == eager.dtype and _same(same, eager)):
                    return None
    except Exception:  # not traceable: the handlers it is
        return None
    broken = False

    def run(*args: Any) -> torch.Tensor:
        nonlocal broken
        if not broken:
            try:
                return graph_run(*args)
            except RuntimeError:  # a size baked into the trace; the handlers from now on
                broken = True
        return fn(*args)

    return run


def _library(filename: str) -> bool:
    """Whether code is Pyro's or torch's own: where their tracer warnings read shapes (a spline's bin count) or
    guard values (``assert``), not branch on them; the graph's checks still run."""
    return filename.startswith(_LIBRARIES)


_LIBRARIES = tuple(os.path.dirname(str(m.__file__)) + os.sep for m in (pyro, torch))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, or equal to float rounding: the same ops may round differently as a graph."""
    return bool(torch.equal(a, b)) or bool(torch.allclose(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max())))
