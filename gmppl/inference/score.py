"""Score matching: minimise the Fisher divergence ``E_{P_X} ||grad log p_X - s_theta||^2 / 2`` without knowing ``p_X``.

* ``method="dsm"`` (denoising score matching, Vincent 2011; Song et al. 2021) for a ``gm.models.Diffusion``
  observed site: with ``t ~ U(eps, 1)``, ``x_t = alpha_t x_0 + sigma_t z``,
  ``L = E_t lambda(t) E ||s_theta(x_t, t) + z / sigma_t||^2``, whose minimiser is the score of ``p_t``;
  ``lambda(t) = sigma_t^2`` (``weighting="sigma2"``, the usual choice) or ``g(t)^2``
  (``weighting="likelihood"``: the loss then bounds the KL, Song et al. 2021b).
  ``time_sampling="importance"`` draws ``t`` with density proportional to ``g(t)^2 / sigma_t^2`` and reweights
  (``gmppl.models.sde.importance_times``): the same expected loss for either weighting, the likelihood
  weighting's with less variance (Song et al. 2021b); ``"uniform"`` (default) draws ``t ~ U(eps, 1)``.
  The fitted network is by default the exponential moving average of the iterates (``ema=0.999``; the
  averaging weight ``min(ema, (1 + t) / (10 + t))`` at step ``t``, as ``Adversarial``'s generator EMA);
  ``ema=None`` keeps the last iterate. Training (the loss history) runs on the iterates.
* ``method="sliced"`` (sliced score matching, Song et al. 2019) for any model with a differentiable
  ``log p_theta``: ``L = E_x E_v [v^T (d^2 log p / dx^2) v + (v^T grad_x log p)^2 / 2]``, ``v ~ N(0, I)``;
  with ``variance_reduction`` (SSM-VR) the second term is its expectation ``||grad_x log p||^2 / 2``.
* ``method="auto"`` (default): ``"dsm"`` when the observed site is a ``Diffusion``, else ``"sliced"``.

**Conditional diffusion.** With data ``{"x": x, "y": y}`` and a ``Diffusion(net, context=c)`` whose context
the program computes from ``y``, DSM trains ``s_theta(x_t, t, c)``: the loss is the same expectation over
the pairs ``(x_0, c)``, minimised by ``grad_x log p_t(x | c)``. ``guidance_dropout=p`` (classifier-free
guidance, Ho & Salimans 2022) replaces each example's context by the diffusion's null context with
probability ``p``, drawn per example per step, so one network also learns ``grad_x log p_t(x)``; sample with
``Diffusion(..., guidance=w)``. The loss is then the DSM loss of the mixture
``(1 - p) p(x | c) + p p(x)`` over contexts, not of ``p(x | c)`` alone; ``log_prob`` stays unguided.
On torch the program is traced at every step when there are inputs (the context is whatever the program
computes from the batch's rows), and once at the first step otherwise.

Both are Fisher divergences up to a constant independent of ``theta``; ``history["loss"]`` records ``L``.
The DSM arithmetic is ``gmppl.models.sde.dsm_loss``, shared by both engines; each draws its own ``t`` and ``z``.

**Why the EMA is the default.** The probability-flow ODE integrates the network's score error over ``t``, so
parameter noise of a constant-learning-rate fit shows up directly in ``log_prob``. On a known three-component
2-D mixture (``examples/flow_matching_moons.py --data mixture --diffusion``: ScoreMLP 3x128, 5000 steps,
Adam 2e-3, batch 256; 1000 held-out points) the last iterate's per-point ``|log p - log p_true|`` was 0.42 nats
(bias -0.18) on torch and 0.35 (-0.12) on JAX; the EMA's is 0.14 (-0.04) and 0.15 (-0.04), and the reverse
SDE's samples improve too (W1 0.20 -> 0.13 on JAX). Likelihood weighting, with or without importance sampling
of ``t``, did not help there (0.40-0.46 without the EMA, 0.15-0.19 with it), so the defaults keep ``sigma2``
and uniform ``t``. The trace in the ODE is already exact in low dimension (``Diffusion(trace="auto")``).

Caveats for ``"sliced"``, both from the Fisher divergence ``E_{P_X} ||grad log p_X - grad log p_theta||^2``:

* the identity behind it is an integration by parts, valid when ``grad log p_theta`` is (absolutely)
  continuous: use smooth networks (tanh, SiLU). Rational-quadratic spline flows are only C^1 and ReLU
  networks piecewise linear; their scores jump, the jumps' share of the Hessian trace is invisible to
  autodiff, and the loss can be driven down by a sawtooth density (held-out log-likelihood collapses);
* it is blind to where mass goes off the data's support and to the relative weights of well-separated
  components: compare held-out log-likelihoods knowing that ``log(1 - q)`` for mass ``q`` left off the
  data is not penalised. Adam's per-coordinate scaling turns gradient noise in those blind directions
  into full-size steps: a smaller learning rate than for maximum likelihood keeps the mass in place.

So ``check`` warns, before step 1, of a sliced fit of a flow with spline transforms or ReLU-type coupling or
autoregressive networks (``gmppl.models.flows.nonsmooth_parts``), naming the smooth flow to use:
``gm.models.flows.affine_coupling(dim, activation="tanh")`` (or ``zoo.flow(dim, kind="affine",
activation="tanh")``). A user's own network is not judged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import array_api_compat as aac

from gmppl.engines.base import ModelInfo
from gmppl.errors import BackendError, NotSupported, UnknownName
from gmppl.inference import averaging
from gmppl.inference.base import Backend
from gmppl.models.diffusion import find_diffusion
from gmppl.models.diffusion_options import context_rows, drop_context, null_context
from gmppl.models.sde import dsm_loss, importance_times

log = logging.getLogger("gmppl")

METHODS = ("auto", "dsm", "sliced")
WEIGHTINGS = ("sigma2", "likelihood")
TIME_SAMPLINGS = ("uniform", "importance")


@dataclass(frozen=True)
class ScorePlan:
    """What a score fit knows of its program: the method, and (torch) the diffusion, dtype and namespace found at
    the first step."""

    method: str
    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Score(Backend):
    """Fit by score matching: denoising (diffusion models) or sliced (any differentiable log-density).

    Example::

        fit = gm.fit(diffusion_model, x, gm.inference.Score(), steps=5000, batch_size=256)
        fit.sample(1000); fit.log_prob(x_test)      # probability-flow ODE likelihood
        fit = gm.fit(flow_model, x, gm.inference.Score(method="sliced"), steps=2000)
        fit = gm.fit(conditional, {"x": x, "y": y}, gm.inference.Score(guidance_dropout=0.1))

    ``guidance_dropout``: the probability that an example's context is replaced by the null context during
    DSM training (classifier-free guidance; 0, the default, trains the conditional score only).
    ``time_sampling``: ``"uniform"`` or ``"importance"`` (DSM's ``t``; see the module notes). ``ema``: the decay
    of the averaged score network a DSM fit returns (``None``: the last iterate); sliced fits ignore it.
    """

    method: str = "auto"
    weighting: str = "sigma2"
    projections: int = 1
    variance_reduction: bool = True
    guidance_dropout: float = 0.0
    time_sampling: str = "uniform"
    ema: float | None = 0.999

    requires: ClassVar[frozenset[str]] = frozenset({"density"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownName(f"Score(method={self.method!r}) is unknown; use one of {METHODS}.")
        if self.weighting not in WEIGHTINGS:
            raise UnknownName(f"Score(weighting={self.weighting!r}) is unknown; use one of {WEIGHTINGS}.")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise UnknownName(f"Score(time_sampling={self.time_sampling!r}) is unknown; use one of {TIME_SAMPLINGS}.")
        if self.ema is not None and (
            not isinstance(self.ema, int | float) or isinstance(self.ema, bool) or not 0 <= self.ema < 1
        ):
            raise BackendError(f"Score(ema={self.ema!r}) must be None or a decay in [0, 1) (e.g. 0.999).")
        if not isinstance(self.projections, int) or self.projections < 1:
            raise BackendError(f"Score(projections={self.projections!r}) must be a positive integer.")
        if not isinstance(self.guidance_dropout, (int, float)) or not 0.0 <= self.guidance_dropout < 1.0:
            raise BackendError(f"Score(guidance_dropout={self.guidance_dropout!r}) must be a probability in [0, 1).")
        if self.guidance_dropout and self.method == "sliced":
            raise BackendError("Score(guidance_dropout=...) trains a conditional diffusion; it needs method='dsm'.")

    # ------------------------------------------------------------------ capabilities
    def required(self) -> frozenset[str]:
        # "auto" reports the score network, so refusals elsewhere name Score for diffusion models;
        # check() also accepts a differentiable density for it (sliced score matching).
        return frozenset({"density"}) if self.method == "sliced" else frozenset({"score_network"})

    def check(self, info: ModelInfo) -> None:
        if not (self.method == "auto" and "density" in info.capabilities):
            super().check(info)
        if self.resolve(info) == "sliced":
            _warn_nonsmooth(info)

    def resolve(self, info: ModelInfo) -> str:
        """The method used for a model: ``"dsm"`` or ``"sliced"``."""
        if self.method != "auto":
            return self.method
        return "dsm" if "score_network" in info.capabilities else "sliced"

    def prepare(
        self, program: Any, info: ModelInfo, example: Any, *, seed: int, inputs: dict | None = None
    ) -> ScorePlan:
        method = self.resolve(info)
        if self.guidance_dropout and method != "dsm":
            raise BackendError("Score(guidance_dropout=...) trains a conditional gm.models.Diffusion by DSM.")
        if self.guidance_dropout:
            if program.engine == "pyro":
                d = _torch_diffusion(program, program.as_array(example), inputs)
            else:
                import jax

                d = _jax_diffusion(program, program.params, jax.random.PRNGKey(seed), program.as_array(example), inputs)
            if d.context is None:
                raise BackendError(
                    "Score(guidance_dropout=...) drops the diffusion's context, but its Diffusion has none: give it "
                    "context= computed from the inputs (data as {'x': x, 'y': y}), or leave guidance_dropout at 0."
                )
        return ScorePlan(method=method)

    @property
    def importance(self) -> bool:
        """Whether DSM draws ``t`` by importance sampling of the likelihood weighting (``time_sampling``)."""
        return self.time_sampling == "importance"

    def _times(self, xp: Any, sde: Any, u: Any) -> tuple[Any, Any]:
        """``(t, weight per example)`` from ``u ~ U(0, 1)``: uniform on ``[eps, 1]`` with the weighting's
        weight applied in ``dsm_loss`` (weight None), or importance-sampled with the likelihood weighting
        folded into a constant weight."""
        eps = sde.t_eps
        if not self.importance:
            return eps + (1.0 - eps) * u, None
        t, w = importance_times(xp, sde, u)
        if self.weighting == "sigma2":  # sigma^2 weighting at importance-sampled t: reweight by sigma^2 / g^2
            w = w * sde.marginal(t, xp)[1] ** 2 / sde.diffusion2(t, xp)
        return t, w

    def _dsm(self, xp: Any, d: Any, score: Any, x0: Any, u: Any, z: Any) -> Any:
        t, w = self._times(xp, d.sde, u)
        if w is None:
            return dsm_loss(xp, d.sde, score, x0, t, z, self.weighting).mean()
        return (w * dsm_loss(xp, d.sde, score, x0, t, z, "sigma2")).mean()

    def ema_decay(self, t: Any) -> Any:
        """The averaging weight at step ``t = 1, 2, ...`` (``gmppl.inference.averaging.decay``)."""
        assert self.ema is not None  # called only when averaged
        return averaging.decay(self.ema, t)

    # ------------------------------------------------------------------ torch
    def torch_init(self, program: Any, plan: ScorePlan, batch: Any, inputs: dict | None, optim: Any) -> Any:
        if plan.method == "dsm":
            # The torch network is a stateful module whose leaves are the param store's: find it once. With
            # inputs the context is computed by the program from each batch's rows, so it is traced per step.
            d = _torch_diffusion(program, batch, inputs)
            if not inputs:
                plan.cache["diffusion"] = d
            plan.cache["dtype"] = d._like(batch)["dtype"]
            plan.cache["xp"] = aac.array_namespace(batch)
        state = super().torch_init(program, plan, batch, inputs, optim)
        if self._averaged(plan):
            ema = [p.detach().clone() for p in state.params]
            state = _EmaState(state.program, state.plan, state.params, state.optimizer, ema)
        return state

    def _averaged(self, plan: ScorePlan) -> bool:
        """Whether the fitted network is the EMA of the iterates: DSM fits with ``ema`` set."""
        return self.ema is not None and plan.method == "dsm"

    def torch_step(self, state: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        state, metrics = super().torch_step(state, batch, inputs)
        if isinstance(state, _EmaState):
            state.t += 1
            averaging.torch_update(state.ema, state.params, self.ema_decay(state.t))
        return state, metrics

    def torch_counters(self, state: Any) -> dict[str, int]:
        return {"t": int(state.t)} if isinstance(state, _EmaState) else {}

    def torch_set_counters(self, state: Any, counters: dict[str, int]) -> None:
        if isinstance(state, _EmaState):
            state.t = int(counters.get("t", 0))

    def torch_tensors(self, state: Any) -> list:
        return list(state.ema) if isinstance(state, _EmaState) else []

    @contextlib.contextmanager
    def torch_fitted(self, state: Any) -> Iterator[None]:
        """The averaged network in the program for the duration (validation mid-training), then the iterate."""
        if not isinstance(state, _EmaState):
            yield
            return
        with averaging.torch_swapped_in(state.params, state.ema):
            yield

    def torch_finish(self, state: Any) -> None:
        """Write the averaged network into the program (its parameters are the fit's)."""
        if isinstance(state, _EmaState):
            averaging.torch_write(state.params, state.ema)

    def torch_loss(self, program: Any, plan: ScorePlan, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        import torch

        if plan.method == "sliced":
            return self._torch_sliced(program, batch, inputs)
        d = plan.cache.get("diffusion") or _torch_diffusion(program, batch, inputs)
        dtype = plan.cache.get("dtype") or d._like(batch)["dtype"]
        xp = plan.cache.get("xp") or aac.array_namespace(batch)
        x0 = batch if batch.dtype == dtype else batch.to(dtype)
        u = torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)  # t: U(eps, 1) or importance-sampled
        z = torch.randn_like(x0)
        drop = None
        if self.guidance_dropout and d.context is not None:
            drop = torch.rand(x0.shape[0], device=x0.device) < self.guidance_dropout
        return self._dsm(xp, d, _conditioned(xp, d, x0.shape[0], drop), x0, u, z), {}

    def _torch_sliced(self, program: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        import torch

        x = batch.detach().requires_grad_(True)
        lp = program.log_prob(x, inputs)
        g = torch.autograd.grad(lp.sum(), x, create_graph=True)[0]
        dims = tuple(range(1, x.dim()))
        hess_term = proj2 = x.new_zeros(x.shape[0])  # per example, summed over the projections
        for _ in range(self.projections):
            v = torch.randn_like(x)
            gv = (g * v).sum(dims)
            hv = torch.autograd.grad(gv.sum(), x, create_graph=True)[0]
            hess_term = hess_term + (hv * v).sum(dims) / self.projections
            proj2 = proj2 + 0.5 * gv.square() / self.projections
        second = 0.5 * g.square().sum(dims) if self.variance_reduction else proj2
        loss = (hess_term + second).mean()
        return loss, {"score_norm": g.detach().square().sum(dims).mean()}

    # ------------------------------------------------------------------ JAX
    def jax_init(
        self, program: Any, plan: ScorePlan, batch: Any, inputs: dict | None, key: Any, optim: Any
    ) -> tuple[dict, Any]:
        state, step = super().jax_init(program, plan, batch, inputs, key, optim)
        if not self._averaged(plan):
            return state, step
        import jax.numpy as jnp

        state = {**state, "ema": state["params"], "ema_t": jnp.zeros((), jnp.int32)}

        def averaged(state: dict, batch: Any, key: Any, inputs: Any = None) -> tuple[dict, dict]:
            ema, t = state["ema"], state["ema_t"] + 1
            new, metrics = step({"params": state["params"], "opt_state": state["opt_state"]}, batch, key, inputs)
            d = self.ema_decay(t.astype(jnp.float32))
            avg = averaging.jax_update(ema, new["params"], d)
            return {**new, "ema": avg, "ema_t": t}, metrics

        return state, averaged

    def jax_params(self, state: dict) -> Any:
        """The averaged network (``ema``), or the last iterate."""
        return state.get("ema", state["params"])

    def jax_loss(self, program: Any, plan: ScorePlan) -> Any:
        import jax
        import jax.numpy as jnp

        if plan.method == "sliced":
            return self._jax_sliced(program)
        p_drop = self.guidance_dropout

        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            k_trace, k_t, k_z, k_drop = jax.random.split(key, 4)
            d = _jax_diffusion(program, params, k_trace, batch, inputs)
            u = jax.random.uniform(k_t, (batch.shape[0],), batch.dtype)
            z = jax.random.normal(k_z, batch.shape, batch.dtype)
            drop = None
            if p_drop and d.context is not None:
                drop = jax.random.uniform(k_drop, (batch.shape[0],)) < p_drop
            score = _conditioned(jnp, d, batch.shape[0], drop)
            return self._dsm(jnp, d, score, batch, u, z), {}

        return loss

    def _jax_sliced(self, program: Any) -> Any:
        import jax
        import jax.numpy as jnp

        m, vr = self.projections, self.variance_reduction

        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            score = jax.grad(lambda x: program.log_prob_fn(params, x, None, inputs).sum())
            dims = tuple(range(1, batch.ndim))
            vs = jax.random.normal(key, (m, *batch.shape), batch.dtype)
            g, hvs = jax.vmap(lambda v: jax.jvp(score, (batch,), (v,)))(vs)
            g = g[0]
            hess_term = jnp.mean(jnp.sum(hvs * vs, axis=tuple(d + 1 for d in dims)), 0)
            if vr:
                second = 0.5 * jnp.sum(g**2, axis=dims)
            else:
                second = jnp.mean(0.5 * jnp.sum(g[None] * vs, axis=tuple(d + 1 for d in dims)) ** 2, 0)
            sq = jnp.sum(jax.lax.stop_gradient(g) ** 2, axis=dims).mean()
            return (hess_term + second).mean(), {"score_norm": sq}

        return loss

    # ------------------------------------------------------------------ evaluation
    def log_prob(self, program: Any, plan: ScorePlan, x: Any, *, inputs: dict | None = None, **kwargs: Any) -> Any:
        """Per-example ``log p(x_i)``; for a diffusion, the probability-flow ODE likelihood (given each row's
        context with ``inputs``; never guided).

        Keywords for a diffusion: ``trace="auto"|"exact"|"hutchinson"``, ``probes`` (Hutchinson
        probes per example), ``return_stderr=True`` to get ``(log p, standard error)``.
        """
        if plan.method != "dsm":
            return super().log_prob(program, plan, x, inputs=inputs, **kwargs)
        return_stderr = kwargs.pop("return_stderr", False)
        unknown = set(kwargs) - {"trace", "probes"}
        if unknown:
            raise BackendError(f"Score.log_prob got unknown keywords {sorted(unknown)}; use trace=, probes=.")
        if program.engine == "pyro":
            with program.scope():  # this program's weights, not the caller's module's (as FlowMatching.log_prob)
                d = _torch_diffusion(program, x, inputs)
                lp, se, _ = d.log_prob_estimate(x, **kwargs)
            lp = lp.detach()
        else:
            fn = _jax_log_prob(program, plan, kwargs.get("trace"), kwargs.get("probes"))
            lp, se = fn(program.params, x, program.as_inputs(inputs))
        return (lp, se) if return_stderr else lp

    def posterior(
        self,
        program: Any,
        plan: ScorePlan,
        x: Any,
        num_samples: int,
        *,
        seed: int | None = None,
        inputs: dict | None = None,
    ) -> Any:
        if plan.method == "dsm":
            raise NotSupported("a diffusion model has no latent site; Score fits give samples and log_prob only.")
        return super().posterior(program, plan, x, num_samples, seed=seed, inputs=inputs)


@dataclass
class _EmaState:
    """Torch-side state of a DSM fit whose fitted network is the EMA of its iterates."""

    program: Any
    plan: Any
    params: list
    optimizer: Any
    ema: list
    t: int = 0


def _warn_nonsmooth(info: ModelInfo) -> None:
    """Sliced score matching on a flow whose score jumps (splines, ReLU networks) fails silently (see the module
    notes): say so before step 1, naming the smooth flow to use. A warning, not an error: the fit is the user's
    to run (a short one, a comparison), and its held-out likelihood shows the damage."""
    import warnings

    from gmppl.models.flows import SMOOTH_FLOW, nonsmooth_parts

    parts = nonsmooth_parts(info.obs_dist)
    if parts:
        msg = (
            f"Score(method='sliced') needs a smooth log-density (its loss is an integration by parts), but the "
            f"observed site {info.observed!r} has {'; '.join(parts)}: its score jumps, the jumps are invisible to "
            "autodiff and the fit can drive the density to a sawtooth (held-out log-likelihood collapses). Use a "
            f"smooth flow, {SMOOTH_FLOW} (engine='numpyro' too), or fit this one with gm.inference.Likelihood()."
        )
        log.warning("%s", msg)
        warnings.warn(msg, UserWarning, stacklevel=4)


def _conditioned(xp: Any, d: Any, n: int, drop: Any = None) -> Any:
    """The network as ``(x, t) -> s``: ``score_net(x, t)``, or ``score_net(x, t, c)`` with the diffusion's context
    (rows where ``drop`` holds replaced by its null context: classifier-free-guidance training)."""
    if d.context is None:
        return d.score_net
    c = context_rows(xp, d.context, n)
    if drop is not None:
        c = drop_context(xp, c, null_context(xp, c, d.null_context), drop)
    net = d.score_net
    return lambda x, t: net(x, t, c)


def _torch_diffusion(program: Any, batch: Any, inputs: dict | None = None) -> Any:
    d = find_diffusion(program.trace(x=batch, inputs=inputs).nodes[program.observed]["fn"])
    if d is None:
        raise NotSupported(f"the observed site {program.observed!r} is not a gm.models.Diffusion.")
    return d


def _jax_diffusion(program: Any, params: Any, key: Any, batch: Any, inputs: dict | None = None) -> Any:
    d = find_diffusion(program.trace(params, key, x=batch, inputs=inputs)[program.observed]["fn"])
    if d is None:
        raise NotSupported(f"the observed site {program.observed!r} is not a gm.models.Diffusion.")
    return d


def _jax_log_prob(program: Any, plan: ScorePlan, trace: str | None, probes: int | None) -> Any:
    import jax

    cache = plan.cache
    key = ("log_prob", trace, probes)
    if key not in cache:

        def fn(params: Any, x: Any, inputs: Any = None) -> Any:
            d = _jax_diffusion(program, params, jax.random.PRNGKey(0), x, inputs)
            lp, se, _ = d.log_prob_estimate(x, trace=trace, probes=probes)
            return lp, se

        cache[key] = jax.jit(fn)
    return cache[key]
