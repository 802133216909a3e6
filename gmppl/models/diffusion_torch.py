"""The torch/Pyro ``Diffusion`` distribution: reverse-SDE and probability-flow-ODE sampling, ODE likelihood.

See ``gmppl.models.diffusion`` for the maths; the per-step arithmetic is ``gmppl.models.sde``'s, shared with
JAX. ODEs are solved with ``torchdiffeq.odeint`` (Dopri5).
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as xp
import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from gmppl.engines.base import reading_shapes
from gmppl.models.continuous_flow import check_field
from gmppl.models.diffusion_options import (
    DiffusionOptions,
    context_rows,
    guided_score,
    null_context,
    probe_event_shape,
)
from gmppl.models.sde import SDE, langevin_step, probability_flow_drift, reverse_step

_SHAPES: dict[int, tuple[int, ...]] = {}


def torch_event_shape(net: torch.nn.Module, context: torch.Tensor | None = None) -> tuple[int, ...]:
    """``net.event_shape`` if set, else the vector size found by probing (cached per network); a conditional
    network is probed as ``net(x, t, context[:1])``."""
    shape = getattr(net, "event_shape", None)
    if shape is not None:
        return tuple(shape)
    if id(net) not in _SHAPES:
        p = next(iter(net.parameters()), None)
        kw: dict[str, Any] = {"dtype": p.dtype, "device": p.device} if p is not None else {}
        extra = () if context is None else (context[:1],)

        def call(d: int) -> tuple[int, ...]:
            with torch.no_grad():
                return tuple(net(torch.zeros(1, d, **kw), torch.full((1,), 0.5, **kw), *extra).shape)

        _SHAPES[id(net)] = probe_event_shape(call)
    return _SHAPES[id(net)]


class TorchDiffusion(pdist.TorchDistribution):
    """A score-based diffusion model over ``event_shape``; build it with ``gm.models.Diffusion``.

    With ``context`` (``R`` rows) it is the conditional law ``p(x | c_i)``, one per row (batch shape ``(R,)``),
    and the network is called as ``score_net(x, t, c)``; ``null_context`` is the guidance's null row.
    """

    arg_constraints: dict = {}
    has_rsample = False
    gmppl_score_model = True
    # The ODE likelihood is for evaluation (solved without gradients to the parameters), so backends
    # that train through log_prob (Likelihood, sliced Score) refuse the model; Score(method="dsm") fits it.
    gmppl_has_log_prob = False

    def __init__(
        self,
        score_net: torch.nn.Module,
        sde: SDE,
        event_shape: tuple[int, ...],
        batch_shape: tuple[int, ...] = (),
        options: DiffusionOptions | None = None,
        validate_args: Any = None,
        context: torch.Tensor | None = None,
        null_context: torch.Tensor | None = None,
    ):
        self.score_net, self.sde = score_net, sde
        self.options = options or DiffusionOptions()
        self.context, self.null_context = context, null_context
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property(is_discrete=False)
    def support(self) -> Any:
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any, _instance: Any = None) -> TorchDiffusion:
        return TorchDiffusion(
            self.score_net,
            self.sde,
            tuple(self.event_shape),
            tuple(batch_shape),
            self.options,
            context=self.context,
            null_context=self.null_context,
        )

    # ------------------------------------------------------------------ pieces
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _like(self, x: torch.Tensor | None = None) -> dict:
        p = next(iter(self.score_net.parameters()), None)
        if p is not None:
            return {"dtype": p.dtype, "device": p.device}
        if x is not None:
            return {"dtype": x.dtype, "device": x.device}
        return {"dtype": torch.get_default_dtype()}

    @property
    def guided(self) -> bool:
        """Whether sampling uses the classifier-free-guided score (a context and ``guidance != 0``)."""
        return self.context is not None and self.options.guidance != 0

    def score(self, x: torch.Tensor, t: torch.Tensor, *, guided: bool = False) -> torch.Tensor:
        """``s_theta(x, t)``, or ``s_theta(x, t, c)`` given the context, on a batch ``x`` of shape
        ``(B, *event_shape)`` with ``t`` scalar or ``(B,)``; ``guided`` (with ``guidance=w != 0``):
        ``(1 + w) s_theta(x, t, c) - w s_theta(x, t, null)``."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if self.context is None:
            return self.score_net(x, t)
        c = context_rows(xp, self.context, x.shape[0])
        s = self.score_net(x, t, c)
        if guided and self.guided:
            s = guided_score(s, self.score_net(x, t, null_context(xp, c, self.null_context)), self.options.guidance)
        return s

    def ode_drift(self, x: torch.Tensor, t: torch.Tensor, *, guided: bool = False) -> torch.Tensor:
        """``f~(x, t) = f(t) x - g(t)^2 s_theta(x, t) / 2``, the probability-flow ODE's velocity."""
        return probability_flow_drift(xp, self.sde, x, t, self.score(x, t, guided=guided))

    # ------------------------------------------------------------------ sampling
    def sample(self, sample_shape: Any = torch.Size()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        if reading_shapes():  # model inspection: the score net checked on zeros, no reverse process
            x = torch.zeros((math.prod(shape), *self.event_shape), **self._like())
            with torch.no_grad():
                check_field(self.score(x, torch.tensor(0.5, dtype=x.dtype), guided=self.guided), x, "score")
            return x.reshape(shape + self.event_shape)
        with torch.no_grad():
            x, _ = self.generate(math.prod(shape))
        return x.reshape(shape + self.event_shape)

    def generate(
        self, n: int, *, sampler: str | None = None, steps: int | None = None, record: int = 0
    ) -> tuple[torch.Tensor, dict]:
        """``n`` draws ``(n, *event_shape)`` and ``{"nfe": score evaluations, "trajectory": [...]}``.

        ``record > 0`` keeps ``record`` snapshots of the reverse process, from ``t = 1`` to ``t = eps``.
        With a context of ``R`` rows, draw ``i`` is given row ``i mod R`` (``n`` a multiple of ``R``); with
        guidance each score evaluation counts twice (conditional and null).
        """
        o = self.options
        per = 2 if self.guided else 1
        sampler, steps = sampler or o.sampler, steps or o.steps
        like = self._like()
        eps = self.sde.t_eps
        x = self.sde.prior_std * torch.randn((n, *self.event_shape), **like)
        info: dict = {"nfe": 0, "trajectory": []}
        if sampler == "ode":
            from torchdiffeq import odeint

            def velocity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                info["nfe"] += per
                return self.ode_drift(y, t, guided=True)

            grid = torch.linspace(1.0, eps, max(record, 2), **like)
            ys = odeint(velocity, x, grid, rtol=o.rtol, atol=o.atol, method="dopri5")
            info["trajectory"] = list(ys) if record else []
            return ys[-1], info
        ts = torch.linspace(1.0, eps, steps + 1, **like)
        keep = set(torch.linspace(0, steps, record).round().long().tolist()) if record else set()
        for i in range(steps):
            if i in keep:
                info["trajectory"].append(x.clone())
            t, dt = ts[i], ts[i] - ts[i + 1]
            if sampler == "pc":
                for _ in range(o.corrector_steps):  # Langevin corrector at t
                    s = self.score(x, t, guided=True)
                    x = langevin_step(xp, self.sde, x, t, dt, s, torch.randn_like(x), o.snr)
                    info["nfe"] += per
            s = self.score(x, t, guided=True)
            info["nfe"] += per
            x = reverse_step(xp, self.sde, x, t, dt, s, torch.randn_like(x) if i < steps - 1 else None)
        if record:
            info["trajectory"].append(x.clone())
        return x, info

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.log_prob_estimate(value)[0]

    def log_prob_estimate(
        self, value: torch.Tensor, *, trace: str | None = None, probes: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """``(log p(x), its Hutchinson standard error or None, score evaluations)``, shaped like the batch.

        Always the unguided model's likelihood, ``p(x | c)`` given each example's context row."""
        o = self.options
        k = len(self.event_shape)
        batch = value.shape[: value.dim() - k]
        x0 = value.reshape(-1, *self.event_shape).to(**self._like(value))
        exact = o.use_exact_trace(self.dim, trace)
        probes = 1 if exact else int(probes or o.probes)
        n = x0.shape[0]
        x0 = x0.repeat(probes, *[1] * k)
        v = None if exact else torch.randint(0, 2, x0.shape, device=x0.device).to(x0.dtype) * 2 - 1
        nfe = [0]

        def dynamics(t: torch.Tensor, state: tuple) -> tuple:
            nfe[0] += 1
            with torch.enable_grad():
                x = state[0].detach().requires_grad_(True)
                f = self.ode_drift(x, t)
                if exact:
                    flat = f.reshape(f.shape[0], -1)
                    div = sum(
                        torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].reshape(f.shape[0], -1)[:, i]
                        for i in range(flat.shape[1])
                    )
                else:
                    assert v is not None  # Hutchinson's probe, drawn when the trace is not exact
                    vjp = torch.autograd.grad((f * v).sum(), x)[0]
                    div = (vjp * v).reshape(f.shape[0], -1).sum(1)
            return f.detach(), div.detach()

        from torchdiffeq import odeint

        from gmppl.models.ode import per_example_rms

        grid = torch.tensor([self.sde.t_eps, 1.0], dtype=x0.dtype, device=x0.device)
        with torch.no_grad():
            xs, divs = odeint(
                dynamics, (x0, torch.zeros(x0.shape[0], **self._like(x0))), grid, rtol=o.rtol, atol=o.atol,
                method="dopri5", options={"norm": per_example_rms},
            )  # fmt: skip
            lp = (self.sde.prior_logp(xs[-1]) + divs[-1]).reshape(probes, n)
        mean = lp.mean(0).reshape(batch)
        se = None if probes < 2 else (lp.std(0) / math.sqrt(probes)).reshape(batch)
        return mean, se, nfe[0]
