"""The torch/Pyro ``ContinuousFlow`` distribution: ODE sampling, inversion and likelihood with ``torchdiffeq``.

See ``gmppl.models.continuous_flow`` for the maths.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from gmppl.engines.base import reading_shapes
from gmppl.models.continuous_flow import FlowOptions, check_context_rows, check_field, probe_shape

_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: torchdiffeq's names for the solvers.
_METHODS = {"dopri5": "dopri5", "euler": "euler", "heun": "heun2", "midpoint": "midpoint"}


def torch_event_shape(net: torch.nn.Module, context: torch.Tensor | None = None) -> tuple[int, ...]:
    """``net.event_shape`` if set, else the vector size found by probing (cached per network)."""
    given = getattr(net, "event_shape", None)
    if given is not None:
        return tuple(given)
    if net not in _SHAPES:
        p = next(iter(net.parameters()), None)
        kw: dict[str, Any] = {"dtype": p.dtype, "device": p.device} if p is not None else {}
        extra = () if context is None else (context[:1],)

        def call(d: int) -> tuple[int, ...]:
            with torch.no_grad():
                return tuple(net(torch.zeros(1, d, **kw), torch.full((1,), 0.5, **kw), *extra).shape)

        _SHAPES[net] = probe_shape(call)
    return _SHAPES[net]


class TorchContinuousFlow(pdist.TorchDistribution):
    """A continuous normalising flow over ``event_shape``; build it with ``gm.models.ContinuousFlow``.

    ``context`` (when given) has shape ``batch_shape + context_row_shape``.
    """

    arg_constraints: dict = {}
    has_rsample = False
    gmppl_velocity_model = True
    # The ODE likelihood is for evaluation (solved without gradients to the parameters), so backends that
    # train through log_prob refuse the model; gm.inference.FlowMatching fits it.
    gmppl_has_log_prob = False

    def __init__(
        self,
        velocity_net: torch.nn.Module,
        event_shape: tuple[int, ...],
        batch_shape: tuple[int, ...] = (),
        options: FlowOptions | None = None,
        validate_args: Any = None,
        *,
        context: torch.Tensor | None = None,
    ):
        self.velocity_net, self.context = velocity_net, context
        self.options = options or FlowOptions()
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> Any:
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any, _instance: Any = None) -> TorchContinuousFlow:
        batch_shape = tuple(batch_shape)
        context = self.context
        if context is not None:
            check_context_rows(tuple(self.batch_shape), batch_shape)
            context = context.expand(*batch_shape, *self._context_row_shape)
        return TorchContinuousFlow(
            self.velocity_net, tuple(self.event_shape), batch_shape, self.options, context=context
        )

    # ------------------------------------------------------------------ pieces
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def _context_row_shape(self) -> tuple[int, ...]:
        return () if self.context is None else tuple(self.context.shape[len(self.batch_shape) :])

    def context_rows(self, lead: tuple[int, ...]) -> torch.Tensor | None:
        """The context broadcast to the batch dims ``lead`` (ending with ``batch_shape``), one row per example."""
        if self.context is None:
            return None
        row = self._context_row_shape
        return self.context.expand(*lead, *row).reshape(-1, *row)

    def _like(self, x: torch.Tensor | None = None) -> dict:
        p = next(iter(self.velocity_net.parameters()), None)
        if p is not None:
            return {"dtype": p.dtype, "device": p.device}
        if x is not None:
            return {"dtype": x.dtype, "device": x.device}
        return {"dtype": torch.get_default_dtype()}

    def velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``v(x, t)`` on a batch ``x`` of shape ``(B, *event_shape)``, ``t`` scalar or ``(B,)``; ``context``
        ``(B, ...)`` rows for a conditional flow."""
        t = t.to(x.dtype).expand(x.shape[0]) if t.dim() == 0 else t
        if context is None:
            return self.velocity_net(x, t)
        return self.velocity_net(x, t, context)

    # ------------------------------------------------------------------ sampling
    def sample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        if reading_shapes():  # model inspection: the velocity net checked on zeros, no solve
            shape = tuple(sample_shape) + tuple(self.batch_shape)
            x = torch.zeros((math.prod(shape), *self.event_shape), **self._like())
            with torch.no_grad():
                check_field(self.velocity(x, torch.tensor(0.5), self.context_rows(shape)), x, "velocity")
            return x.reshape(*shape, *self.event_shape)
        x, _ = self.generate(tuple(sample_shape))
        return x

    def generate(
        self, sample_shape: tuple[int, ...] | int = (), *, solver: str | None = None, steps: int | None = None,
        record: int = 0,
    ) -> tuple[torch.Tensor, dict]:  # fmt: skip
        """Draws shaped ``sample_shape + batch_shape + event_shape`` (an int ``n`` means ``(n,)``) and
        ``{"nfe": velocity evaluations, "trajectory": [...]}`` (``record`` states from ``t = 0`` to 1)."""
        shape = ((sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)) + tuple(self.batch_shape)
        z = torch.randn((math.prod(shape), *self.event_shape), **self._like())
        with torch.no_grad():
            x, info = self.transform(z, self.context_rows(shape), solver=solver, steps=steps, record=record)
        info["trajectory"] = [s.reshape(*shape, *self.event_shape) for s in info["trajectory"]]
        return x.reshape(*shape, *self.event_shape), info

    def transform(
        self, z: torch.Tensor, context: torch.Tensor | None = None, *, solver: str | None = None,
        steps: int | None = None, record: int = 0,
    ) -> tuple[torch.Tensor, dict]:  # fmt: skip
        """``x(1)`` from ``x(0) = z`` (rows ``(B, *event_shape)``) with the sampling solver, and
        ``{"nfe", "trajectory"}``."""
        solver, steps = self.options.solver_and_steps(solver, steps)
        return self._solve(z, context, 0.0, 1.0, solver, steps, record)

    def invert(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``x(0)`` from ``x(1) = x``: the flow's inverse, by adaptive Dopri5 backwards in time."""
        with torch.no_grad():
            return self._solve(x.to(**self._like(x)), context, 1.0, 0.0, "dopri5", 1, 0)[0]

    def _solve(
        self, y: torch.Tensor, context: Any, t0: float, t1: float, solver: str, steps: int, record: int
    ) -> tuple[torch.Tensor, dict]:
        from torchdiffeq import odeint

        o = self.options
        like: dict[str, Any] = {"dtype": y.dtype, "device": y.device}
        info: dict = {"nfe": 0, "trajectory": []}

        def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            info["nfe"] += 1
            return self.velocity(x, t, context)

        if solver == "dopri5":
            grid = torch.linspace(t0, t1, max(record, 2), **like)
            ys = odeint(f, y, grid, rtol=o.rtol, atol=o.atol, method="dopri5", options={"max_num_steps": o.max_steps})
            keep = range(len(ys)) if record else []
        else:
            grid = torch.linspace(t0, t1, steps + 1, **like)
            ys = odeint(f, y, grid, method=_METHODS[solver])
            keep = torch.linspace(0, steps, record).round().long().tolist() if record else []
        info["trajectory"] = [ys[i] for i in keep]
        return ys[-1], info

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.log_prob_estimate(value)[0]

    def log_prob_estimate(
        self, value: torch.Tensor, *, trace: str | None = None, probes: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(log p(x), its Hutchinson standard error or None, velocity evaluations)``, shaped like the batch;
        each example's ODE solved to the tolerance (`gmppl.models.ode.per_example_rms`)."""
        from torchdiffeq import odeint

        from gmppl.models.ode import per_example_rms

        o = self.options
        k = len(self.event_shape)
        batch = tuple(value.shape[: value.dim() - k])
        x1 = value.reshape(-1, *self.event_shape).to(**self._like(value))
        c = self.context_rows(batch)
        exact, probes = o.trace_and_probes(self.dim, trace, probes)
        n = x1.shape[0]
        x1 = x1.repeat(probes, *[1] * k)
        c = None if c is None else c.repeat(probes, *[1] * (c.dim() - 1))
        e = None if exact else torch.randint(0, 2, x1.shape, device=x1.device).to(x1.dtype) * 2 - 1
        nfe = [0]

        def dynamics(t: torch.Tensor, state: tuple) -> tuple:
            nfe[0] += 1
            with torch.enable_grad():
                x = state[0].detach().requires_grad_(True)
                f = self.velocity(x, t, c)
                flat = f.reshape(f.shape[0], -1)
                if e is None:  # the exact trace
                    div = sum(
                        torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].reshape(f.shape[0], -1)[:, i]
                        for i in range(flat.shape[1])
                    )
                else:
                    vjp = torch.autograd.grad((f * e).sum(), x)[0]
                    div = (vjp * e).reshape(f.shape[0], -1).sum(1)
            return f.detach(), div.detach()

        grid = torch.tensor([1.0, 0.0], dtype=x1.dtype, device=x1.device)
        with torch.no_grad():
            xs, ls = odeint(
                dynamics, (x1, torch.zeros(x1.shape[0], dtype=x1.dtype, device=x1.device)), grid, rtol=o.rtol,
                atol=o.atol, method="dopri5", options={"max_num_steps": o.max_steps, "norm": per_example_rms},
            )  # fmt: skip
            lp = (_std_normal_logp(xs[-1]) + ls[-1]).reshape(probes, n)
        mean = lp.mean(0).reshape(batch)
        se = None if probes < 2 else (lp.std(0) / math.sqrt(probes)).reshape(batch)
        return mean, se, nfe[0]


def _std_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over all but the leading axis."""
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * flat.square().sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
