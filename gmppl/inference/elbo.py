r"""Stochastic variational inference: fit ``p_theta(x, z)`` and a guide ``q_phi(z | x)`` by the ELBO.

For every example the evidence lower bound

    log p(x) >= ELBO(x) = E_{q(z|x)}[log p(x, z) - log q(z | x)] = log p(x) - KL(q(z|x) || p(z|x))

turns maximum likelihood (forward ``KL(P_X || P_theta)``) into a tractable objective; the guide is
amortised (``gm.models.AmortizedNormal`` by default) so the gap ``KL(q || p(z|x))`` shrinks for all
``x`` at once. The objectives, each Pyro's/NumPyro's own where it exists:

* ``"trace"``: the Monte Carlo ELBO with ``num_particles`` draws (``Trace_ELBO``).
* ``"meanfield"``: the same with ``KL(q(z|x) || p(z))`` in closed form where registered
  (``TraceMeanField_ELBO``): less gradient noise.
* ``"renyi"``: Renyi's alpha bound ``1/(1-alpha) log E_q[(p(x,z)/q(z|x))^{1-alpha}]`` from
  ``num_particles`` draws per example (Li & Turner, 2016; ``RenyiELBO``).
* ``"iwae"``: ``E[log 1/K sum_k p(x, z_k)/q(z_k|x)]`` with ``K = num_particles`` (Burda et al., 2016),
  the ``alpha = 0`` Renyi bound, which rises to ``log p(x)`` as ``K`` grows.

NumPyro's ``RenyiELBO`` is used for both Renyi objectives. Pyro's has no differentiable loss, so on
the torch engine gmppl computes them from the per-example log-weights
``log w_ik = log p(x_i, z_ik) - log q(z_ik | x_i)`` (reparameterised guides only) — the same
log-weights that give ``Fit.log_prob``: ``log p(x_i) ~ log 1/K sum_k w_ik``, with the delta-method
standard error ``sd(w_i.) / (sqrt(K) mean(w_i.))`` (its bias is about ``-stderr^2 / 2``).

``history["loss"]`` is the negative bound per example (nats). On the torch engine the loss is compiled
(Pyro's ``JitTrace_ELBO`` / ``pyro.ops.jit``) and checked once against the uncompiled one, and
``gm.optim.Adam`` runs as torch's fused Adam (one kernel per parameter). ``torch.compile`` is not used:
it breaks its graph at Pyro's effect handlers and compiles for minutes without a faster step (see the
README's benchmarks). On JAX the steps run inside the engine's ``lax.scan``.

ArviZ (``Fit.to_arviz(x)``, see ``ELBO.arviz_groups``): draw ``s`` is a joint draw of every example's
latent from ``q``; ``log_likelihood`` holds ``log p(x_i | z_{s,i})`` per draw,
``approximate_posterior`` holds ``log_p = log p(x, z_s)`` and ``log_q = log q(z_s | x)`` per draw (the
inputs of ``az.loo_approximate_posterior``), and ``log_marginal_likelihood`` the IWAE estimates.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from gmppl._dims import site_dims
from gmppl.engines.base import ModelInfo
from gmppl.engines.calls import make_call
from gmppl.errors import BackendError, ModelError, NotSupported, UnknownName
from gmppl.inference.base import Backend
from gmppl.inference.draws import has_draws
from gmppl.models.guides import MODULE_NAME, AmortizedNormal, LatentSite

log = logging.getLogger("gmppl")

OBJECTIVES = ("trace", "meanfield", "renyi", "iwae")
_PARTICLES = "_gmppl_particles"


# ---------------------------------------------------------------------- the result of log_prob
@dataclass(frozen=True, eq=False)
class LogProbEstimate:
    """Per-example importance-weighted estimates of ``log p(x_i)`` (not exact values).

    ``np.asarray(est)`` gives ``value``; ``stderr`` is each estimate's Monte Carlo standard error
    from ``num_particles`` draws of the guide; ``elbo`` is the mean log-weight, an unbiased estimate
    of each example's ELBO (``value - elbo`` is the gain of the importance-weighted bound).
    """

    value: np.ndarray
    stderr: np.ndarray
    elbo: np.ndarray
    num_particles: int
    is_estimate: ClassVar[bool] = True

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.value if dtype is None else self.value.astype(dtype)
        return out.copy() if copy else out

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, index: Any) -> Any:
        return self.value[index]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def mean(self, *args: Any, **kwargs: Any) -> Any:
        """The mean of the estimates (``np.mean(est)`` works too)."""
        return self.value.mean(*args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"LogProbEstimate(n={len(self.value)}, mean={self.value.mean():.4f}, "
            f"max stderr={self.stderr.max():.2g}, K={self.num_particles})"
        )


def log_mean_exp(log_w: np.ndarray) -> LogProbEstimate:
    """``log 1/K sum_k exp(log_w[k, i])`` per column ``i``, with its delta-method standard error."""
    lw = np.asarray(log_w, dtype=np.float64)
    k = lw.shape[0]
    top = lw.max(0)
    w = np.exp(lw - top)
    mean = w.mean(0)
    se = w.std(0, ddof=1) / (math.sqrt(k) * mean) if k > 1 else np.full(mean.shape, np.inf)
    return LogProbEstimate(value=top + np.log(mean), stderr=se, elbo=lw.mean(0), num_particles=k)


# ---------------------------------------------------------------------- what setup learns
@dataclass
class _Plan:
    """The guide, and what the ELBO needs to know about the model's and guide's sites."""

    guide: Callable
    latents: tuple[str, ...]
    data_plate: str | None
    data_dim: int | None
    nesting: int  # plate dims the program uses (the particle plate goes outside them)
    local: bool  # every sample site sits in the data plate: log p(x) factorises over examples
    reparameterized: bool
    objective: Any = None  # the PPL's ELBO object, or None for gmppl's Renyi/IWAE (torch)
    vectorized: bool = True  # particles as a plate (Pyro); JAX always vmaps
    cache: dict = field(default_factory=dict)


def _frames(site: dict) -> list:
    return [f for f in site.get("cond_indep_stack", ()) if getattr(f, "dim", None) is not None]


def _sample_sites(nodes: dict) -> dict[str, dict]:
    return {
        name: s for name, s in nodes.items() if s["type"] == "sample" and type(s.get("fn")).__name__ != "_Subsample"
    }


def _latents(nodes: dict) -> dict[str, dict]:
    return {k: s for k, s in _sample_sites(nodes).items() if not s.get("is_observed", False)}


def _check_match(model_nodes: dict, guide_nodes: dict) -> None:
    """The guide must sample exactly the model's latents (plus auxiliary sites), with the same shapes."""
    m = _latents(model_nodes)
    g = {k: s for k, s in _latents(guide_nodes).items() if not s.get("infer", {}).get("is_auxiliary")}
    if set(m) - set(g):
        raise ModelError(
            f"the guide does not sample the model's latent site(s) {sorted(set(m) - set(g))} "
            f"(it samples {sorted(g)}); a guide needs one sample site per latent, with the same names."
        )
    if set(g) - set(m):
        raise ModelError(
            f"the guide samples {sorted(set(g) - set(m))}, which the model does not have (its latents: "
            f"{sorted(m)}); rename the guide's sites to the model's."
        )
    for name in m:
        ms, gs = tuple(m[name]["value"].shape), tuple(g[name]["value"].shape)
        if ms != gs:
            raise ModelError(
                f"the guide's {name!r} has shape {gs} but the model's has shape {ms} on the same data; "
                "the guide must give one value per example with the model's event shape."
            )


def _plan(model_nodes: dict, guide_nodes: dict, guide: Callable, observed: str, n: int) -> _Plan:
    sites = [*_sample_sites(model_nodes).values(), *_latents(guide_nodes).values()]
    data = [f for f in _frames(model_nodes[observed]) if f.size == n]
    frame = data[0] if data else None
    dims = [-f.dim for s in sites for f in _frames(s)]
    local = frame is not None and all(frame.name in {f.name for f in _frames(s)} for s in sites)
    return _Plan(
        guide=guide,
        latents=tuple(_latents(model_nodes)),
        data_plate=frame.name if frame else None,
        data_dim=frame.dim if frame else None,
        nesting=max(dims, default=1),
        local=local,
        reparameterized=all(bool(getattr(s["fn"], "has_rsample", False)) for s in _latents(guide_nodes).values()),
    )


def _latent_site(model_nodes: dict, latent: str | None, observed: str, x_shape: tuple, n: int) -> LatentSite:
    """Where the default guide samples: the model's one latent, in the data plate, real-valued."""
    latents = _latents(model_nodes)
    if len(latents) != 1:
        raise BackendError(
            f"the default guide (AmortizedNormal) covers one latent site; the model has {sorted(latents)}. "
            "Pass guide=<your guide program> (an autoguide works) to ELBO."
        )
    name, site = next(iter(latents.items()))
    if latent is not None and latent in model_nodes and latent != name:
        name, site = latent, model_nodes[latent]
    fn = site["fn"]
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    if support.is_discrete or type(support).__name__ != "_Real":
        raise BackendError(
            f"the latent {name!r} has support {fn.support}; AmortizedNormal is a Normal guide for real-valued "
            "latents. Pass guide=<your guide> for other supports."
        )
    frames = [f for f in _frames(site) if f.size == n and f.name in {g.name for g in _frames(model_nodes[observed])}]
    shape = tuple(site["value"].shape[1:])
    if not frames or len(fn.event_shape) != len(shape):
        raise BackendError(
            f"the latent {name!r} (shape {tuple(site['value'].shape)}) is not one value per example inside the data "
            f"plate with the rest as event dims; the amortised guide needs z_i per x_i, e.g. "
            f"`with plate('data', n): sample({name!r}, dist.Normal(0, 1).expand([k]).to_event(1))`. "
            "Or pass guide=<your guide>."
        )
    return LatentSite(name=name, shape=shape, x_shape=tuple(x_shape), plate=frames[0].name, dim=frames[0].dim)


def _check_objective_engine(objective: Any, module: str, engine: str) -> None:
    if objective is not None and not type(objective).__module__.startswith(module):
        raise BackendError(
            f"objective={type(objective).__name__} from {type(objective).__module__} cannot fit a {engine} program; "
            f"pass a {engine} ELBO or a name ({', '.join(OBJECTIVES)})."
        )


def _check_other_batch_size(latent_shapes: Callable[[int], dict], n: int, full: dict) -> None:
    """Training feeds minibatches of another size than the setup example: the guide must follow ``len(x)``
    (its per-example latents, sized ``n`` on the example, must be sized ``n - 1`` when ``latent_shapes(n - 1)``
    runs it on one example fewer and returns each latent's shape)."""
    if n < 2:
        return
    sized = [k for k, site in _latents(full).items() if tuple(site["value"].shape[:1]) == (n,)]
    try:
        short = latent_shapes(n - 1)
        wrong = [k for k in sized if tuple(short[k][:1]) != (n - 1,)]
        problem = f"its sites {wrong} keep {n} values" if wrong else ""
    except Exception as e:
        problem = f"it fails ({type(e).__name__}: {e})"
    if problem:
        raise BackendError(
            f"the guide runs on {n} examples but on {n - 1} {problem}. gmppl trains on minibatches, so q(z|x) must "
            "follow len(x): use an amortised guide (gm.models.AmortizedNormal, or an encoder of x); non-amortised "
            "autoguides suit global latents only."
        )


# ---------------------------------------------------------------------- the backend
@dataclass(frozen=True)
class ELBO(Backend):
    """Fit a latent-variable model ``p(z) p(x|z)`` with a guide ``q(z|x)`` by stochastic variational inference.

    ``guide``: None (an amortised diagonal Normal, ``gm.models.AmortizedNormal()``), an
    ``AmortizedNormal(...)``, or any Pyro/NumPyro guide program ``guide(x=None, n=None)``, autoguides
    included. ``objective``: ``"trace"``, ``"meanfield"``, ``"renyi"`` (with ``alpha``), ``"iwae"``,
    or a Pyro/NumPyro ELBO object used as is. ``num_particles``: draws per step (``K`` for IWAE).
    ``jit``: compile the torch loss. ``eval_particles``: the default ``K`` of ``Fit.log_prob``.

    ``gm.load(path, model)`` rebuilds the default guide; a fit with any other guide loads with
    ``gm.load(path, model, backend=ELBO(guide=<the same guide>))``. On CPU the torch engine runs the
    program with one intra-op thread (``GMPPL_TORCH_THREADS`` overrides; see
    ``gmppl.engines.pyro.torch_threads``).

    Example::

        fit = gm.fit(vae_model, x, gm.inference.ELBO(objective="iwae", num_particles=8), steps=5000)
        lp = fit.log_prob(x_test, num_particles=1000)   # estimates, with lp.stderr
        z = fit.posterior(x_test, num_samples=100)      # (100, len(x_test), *z_shape)
    """

    guide: Any = None
    objective: Any = "trace"
    num_particles: int = 1
    alpha: float = 0.0
    jit: bool = True
    eval_particles: int = 1000

    requires: ClassVar[frozenset[str]] = frozenset({"observation_model"})

    def __post_init__(self) -> None:
        if isinstance(self.objective, str) and self.objective not in OBJECTIVES:
            raise UnknownName(f"ELBO(objective={self.objective!r}) is unknown; use one of {OBJECTIVES}.")
        if not isinstance(self.objective, str) and not hasattr(self.objective, "loss"):
            raise BackendError(f"ELBO(objective={self.objective!r}) is neither a name nor a Pyro/NumPyro ELBO.")
        for name in ("num_particles", "eval_particles"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise BackendError(f"ELBO({name}={v!r}) must be a positive integer.")
        if self.objective == "renyi" and self.alpha == 1:
            raise BackendError("ELBO(objective='renyi', alpha=1) is the ordinary ELBO: use objective='trace'.")
        if self.guide is not None and not (isinstance(self.guide, AmortizedNormal) or callable(self.guide)):
            raise BackendError(f"ELBO(guide={self.guide!r}) is not a guide program or gm.models.AmortizedNormal.")

    @property
    def _alpha(self) -> float:
        return 0.0 if self.objective == "iwae" else float(self.alpha)

    # ------------------------------------------------------------------ capabilities
    def check(self, info: ModelInfo) -> None:
        if not info.latents and not info.implicit:
            raise NotSupported(
                f"ELBO fits models with a latent variable, but the program has no sample site besides "
                f"{info.observed!r}. A fully observed model has an exact likelihood: fit it with "
                "gm.inference.Likelihood()."
            )
        super().check(info)

    def prepare(self, program: Any, info: ModelInfo, example: Any, *, seed: int, inputs: dict | None = None) -> _Plan:
        """Build (or take) the guide, register its parameters in the program, check it matches the model, and
        return the plan (the guide, the latents' roles, the objective)."""
        if program.engine == "pyro":
            plan = _pyro_setup(self, program, info, np.asarray(example), seed, inputs or {})
        else:
            plan = _numpyro_setup(self, program, info, np.asarray(example), seed, inputs or {})
        if self.objective in ("renyi", "iwae"):
            if not plan.local:
                raise BackendError(
                    f"objective={self.objective!r} needs every latent inside the data plate (one bound per example); "
                    "use objective='trace' for models with global latents."
                )
            if program.engine == "pyro" and not plan.reparameterized:
                raise BackendError(
                    f"objective={self.objective!r} on the Pyro engine needs a reparameterised guide (every guide site "
                    "with rsample); use objective='trace' for guides with discrete sites."
                )
        return plan

    # ------------------------------------------------------------------ torch
    def torch_init(self, program: Any, plan: _Plan, batch: Any, inputs: dict | None, optim: Any) -> Any:
        plan.cache["loss"] = _pyro_training_loss(self, program, plan, batch, inputs or {})
        return super().torch_init(program, plan, batch, inputs, optim)

    def torch_loss(self, program: Any, plan: _Plan, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        loss = plan.cache.get("loss") or _pyro_loss(self, program, plan, jit=False)
        return loss(batch, inputs or {}) / batch.shape[0], {}

    # ------------------------------------------------------------------ JAX
    def jax_loss(self, program: Any, plan: _Plan) -> Any:
        elbo, model, guide = plan.objective, program.fn, plan.guide

        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            c = program.constrain(params)
            return elbo.loss(key, c, model, guide, batch, **(inputs or {})) / batch.shape[0], {}

        return loss

    # ------------------------------------------------------------------ evaluation
    def validator(self, program: Any, plan: _Plan, x: Any, inputs: dict | None = None) -> Callable[[], float]:
        """The negative ELBO per example on held-out ``x`` (the uncompiled loss on torch: any batch size)."""
        if program.engine != "pyro":
            return super().validator(program, plan, x, inputs)
        xv, rows, loss = program.as_array(x), program.as_inputs(inputs), _pyro_loss(self, program, plan, jit=False)

        def value() -> float:
            with program.seeded(0):
                return float(loss(xv, rows).detach()) / xv.shape[0]

        return value

    def log_prob(
        self,
        program: Any,
        plan: _Plan,
        x: Any,
        *,
        inputs: dict | None = None,
        num_particles: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> LogProbEstimate:
        """Importance-weighted estimates of ``log p(x_i)`` from ``num_particles`` guide draws each (seeded)."""
        if kwargs:
            raise BackendError(f"ELBO log_prob takes num_particles= and seed=, not {sorted(kwargs)}.")
        if not plan.local:
            raise NotSupported(
                "log p(x_i) per example needs every latent inside the data plate; this model has global latents."
            )
        k = int(num_particles or self.eval_particles)
        lw = (
            _pyro_log_weights_np(program, plan, x, k, seed, program.as_inputs(inputs))
            if program.engine == "pyro"
            else _jax_log_weights_np(program, plan, x, k, seed, program.as_inputs(inputs))
        )
        return log_mean_exp(lw)

    def posterior(
        self,
        program: Any,
        plan: _Plan,
        x: Any,
        num_samples: int,
        *,
        seed: int | None = None,
        inputs: dict | None = None,
    ) -> Any:
        """Draws of the latent from the guide ``q(z | x)``: shape ``(num_samples, len(x), *z_shape)``."""
        rows = program.as_inputs(inputs)
        if program.engine == "pyro":
            return _pyro_posterior(program, plan, x, num_samples, seed, rows)
        return _jax_posterior(program, plan, x, num_samples, program.key(seed), rows)

    # ------------------------------------------------------------------ ArviZ
    def arviz_groups(
        self,
        fit: Any,
        x: Any,
        *,
        seed: int = 0,
        posterior_samples: int = 20,
        log_likelihood: bool = True,
        inputs: dict | None = None,
    ) -> tuple[dict, dict]:
        r"""What ``fit.to_arviz(x)`` holds for an ELBO fit, so that ``az.loo_approximate_posterior`` works.

        Draw ``s`` is a joint draw ``z_s = (z_{s,1}, ..., z_{s,n}) ~ q(. | x)`` of every example's
        latent (``posterior``: ``chain, draw, obs, z_dim``, ``posterior_samples`` draws), and for it:

        * ``log_likelihood[x]``: ``log p(x_i | z_{s,i})`` (``chain, draw, obs``), the pointwise
          likelihood ArviZ's LOO functions read;
        * ``approximate_posterior``: ``log_p = sum_i log p(x_i, z_{s,i})`` (the unnormalised target)
          and ``log_q = sum_i log q(z_{s,i} | x_i)`` (``chain, draw``), and the per-example
          ``log_weight = log p(x_i, z_{s,i}) - log q(z_{s,i} | x_i)`` (``chain, draw, obs``);
        * ``log_marginal_likelihood[x]``: the importance-weighted estimates of ``log p(x_i)`` from
          ``Fit.log_prob`` (``eval_particles`` draws; ``x_stderr`` their standard errors) — what
          ``log_likelihood`` held before it became per draw (``chain, draw=1, obs``).

        ``az.loo_approximate_posterior(tree, tree.approximate_posterior.log_p,
        tree.approximate_posterior.log_q)`` then reweights the draws by ``p(z_s | x) / q(z_s | x)``.
        Read it with care: with the decoder a point estimate, ``z_i``'s leave-one-out posterior is its
        prior, so ``elpd_loo_i = log p(x_i)``; the reweighting estimates it harmonic-mean style and the
        weights carry every other example's ``log_weight``, so they degenerate as ``n`` grows (check
        ``pareto_k``). ``log_marginal_likelihood`` (or ``logmeanexp`` of ``log_weight`` over draws) is
        the better estimate of the same ``log p(x_i)``. When ``q`` is the exact posterior,
        ``log_p - log_q = sum_i log p(x_i)`` for every draw and the weights are uniform.

        Nothing is added without ``x``, without ``log_likelihood``, for fits holding parameter draws
        (Bayesian SVI: ``log_likelihood`` is then per parameter draw already), or for models with
        global latents (no per-example factorisation).
        """
        if x is None or not log_likelihood or has_draws(fit):
            return {}, {}
        plans = fit.plans
        if not all(plan.local for plan in plans):
            return {}, {}
        num = int(posterior_samples)
        latent = fit.info.latent if fit.info.latent in plans[0].latents else plans[0].latents[0]
        terms = []
        est = []
        for program, plan in zip(fit.programs, plans, strict=True):
            rows = program.as_inputs(inputs)
            with program.scope():  # this chain's fitted values
                if program.engine == "pyro":
                    terms.append(_pyro_draw_terms(program, plan, program.as_array(x), num, seed, latent, rows))
                else:
                    terms.append(_jax_draw_terms(program, plan, x, num, seed, latent, rows))
                est.append(self.log_prob(program, plan, program.as_array(x), inputs=inputs))
        t = {k: np.stack([d[k] for d in terms]) for k in terms[0]}
        obs = fit.info.observed
        var = latent.replace("/", ".")
        lw = t["ll"] + t["lp"] - t["lq"]
        groups = {
            "posterior": {var: t["z"]},
            "log_likelihood": {obs: t["ll"]},
            "approximate_posterior": {
                "log_p": (t["ll"] + t["lp"]).sum(-1),
                "log_q": t["lq"].sum(-1),
                "log_weight": lw,
            },
            "log_marginal_likelihood": {
                obs: np.stack([e.value for e in est])[:, None],
                f"{obs}_stderr": np.stack([e.stderr for e in est])[:, None],
            },
        }
        dims = {
            "posterior": {var: site_dims(latent, t["z"].shape[2:], True, latent)},
            "log_likelihood": {obs: ["obs"]},
            "approximate_posterior": {"log_p": [], "log_q": [], "log_weight": ["obs"]},
            "log_marginal_likelihood": {obs: ["obs"], f"{obs}_stderr": ["obs"]},
        }
        return groups, dims

    def fitted_guide(self, plan: _Plan) -> Callable:
        """The fitted guide program ``guide(x)`` (its parameters live in the program): ``gm.fit`` draws
        global sites from it (Bayesian SVI, see ``gmppl.inference.draws.guide_draws``)."""
        return plan.guide


def _head(rows: dict, k: int) -> dict:
    return {name: v[:k] for name, v in rows.items()}


# ====================================================================== Pyro / torch
def _jit_mean_field() -> type:
    from pyro.infer import JitTraceMeanField_ELBO

    class JitMeanField(JitTraceMeanField_ELBO):
        """Pyro 1.9's ``JitTraceMeanField_ELBO`` tests a never-set attribute and so re-traces on every
        call (slower than no JIT, and with a different random stream); this keeps the first trace."""

        def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> Any:
            compiled = getattr(self, "_differentiable_loss", None)
            if compiled is None:
                return super().differentiable_loss(model, guide, *args, **kwargs)
            return compiled(*args, _pyro_model_id=id(model), _pyro_guide_id=id(guide), **kwargs)

    return JitMeanField


def _pyro_objective(backend: ELBO, plan: _Plan, *, jit: bool) -> Any:
    """Pyro's ELBO object for a named objective, or None where gmppl computes it (renyi, iwae)."""
    from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO

    if not isinstance(backend.objective, str):
        return backend.objective
    classes = {"trace": (Trace_ELBO, JitTrace_ELBO), "meanfield": (TraceMeanField_ELBO, _jit_mean_field())}
    if backend.objective not in classes:
        return None
    cls = classes[backend.objective][int(jit)]
    kwargs = {"ignore_jit_warnings": True} if jit else {}
    return cls(
        num_particles=backend.num_particles,
        vectorize_particles=backend.num_particles > 1 and plan.vectorized,
        max_plate_nesting=plan.nesting,
        **kwargs,
    )


def _guide(backend: ELBO, program: Any, rows: dict) -> Any:
    """The user's guide as ``guide(x=None, n=None, **inputs)`` (called as the model is)."""
    return make_call(backend.guide, program.observed, tuple(rows)).bind(backend.guide)


def _pyro_setup(backend: ELBO, program: Any, info: ModelInfo, example: np.ndarray, seed: int, inputs: dict) -> _Plan:
    import pyro.poutine as poutine
    import torch

    x, rows = program.as_array(example), program.as_inputs(inputs)
    with torch.no_grad():
        model_tr = program.trace(x=x, inputs=rows)
        guide = backend.guide or AmortizedNormal()
        if isinstance(guide, AmortizedNormal):
            site = _latent_site(model_tr.nodes, program.latent, program.observed, info.x_event_shape, len(example))
            if any(k.startswith(MODULE_NAME + "$$$") for k in program.params()):
                raise BackendError(f"the model registers a module named {MODULE_NAME!r}, the default guide's name.")
            guide = guide.build("pyro", site, seed=seed, dtype=x.dtype, inputs=rows)
        else:
            guide = _guide(backend, program, rows)
        with program.scope():
            try:
                guide_tr = poutine.trace(guide).get_trace(x, **rows)
            except Exception as e:
                raise ModelError(
                    f"running the guide failed: {type(e).__name__}: {e}. gmppl calls it as the model is called."
                ) from e
            _check_match(model_tr.nodes, guide_tr.nodes)
            _check_other_batch_size(
                lambda m: {
                    k: tuple(site["value"].shape)
                    for k, site in _latents(poutine.trace(guide).get_trace(x[:m], **_head(rows, m)).nodes).items()
                },
                len(x),
                guide_tr.nodes,
            )
            model_tr = poutine.trace(poutine.replay(program.fn, trace=guide_tr)).get_trace(x, **rows)
        program.move_params()
    plan = _plan(model_tr.nodes, guide_tr.nodes, guide, program.observed, len(example))
    plan.vectorized = _pyro_vectorizes(program, plan, x, rows)
    plan.objective = _pyro_objective(backend, plan, jit=False)
    _check_objective_engine(plan.objective, "pyro.infer", "Pyro")
    if plan.objective is not None and not hasattr(plan.objective, "differentiable_loss"):
        raise BackendError(
            f"objective={type(plan.objective).__name__} has no differentiable_loss; for Renyi/IWAE bounds use "
            "objective='renyi' or 'iwae'."
        )
    return plan


def _pyro_vectorizes(program: Any, plan: _Plan, x: Any, rows: dict) -> bool:
    """Whether model and guide broadcast over a particle plate outside their own plates (Pyro's
    ``vectorize_particles``): every site's log-density must then carry the particle dim."""
    import pyro
    import pyro.poutine as poutine
    import torch

    dim = plan.nesting + 1
    try:
        with torch.no_grad(), program.scope(), pyro.plate(_PARTICLES, 2, dim=-dim):
            guide_tr = poutine.trace(plan.guide).get_trace(x, **rows)
            model_tr = poutine.trace(poutine.replay(program.fn, trace=guide_tr)).get_trace(x, **rows)
            guide_tr.compute_log_prob()
            model_tr.compute_log_prob()
    except Exception as e:  # the program does not broadcast over an extra batch dim
        log.info("ELBO: particles run one by one: the program does not vectorise (%s: %s)", type(e).__name__, e)
        return False
    sites = [*_sample_sites(model_tr.nodes).values(), *_sample_sites(guide_tr.nodes).values()]
    return all(s["log_prob"].dim() >= dim and s["log_prob"].shape[-dim] == 2 for s in sites)


def _per_example(nodes: dict, plan: _Plan, particles: bool, only: Callable[[str], bool] | None = None) -> Any:
    """Sum every sample site's (or those ``only`` keeps) log-density down to ``(particles, examples)``
    (or ``(examples,)``)."""
    import torch

    ndim = plan.nesting + int(particles)
    keep = {ndim + int(plan.data_dim or 0), *([0] if particles else [])}
    total = 0.0
    for name, site in _sample_sites(nodes).items():
        if only is not None and not only(name):
            continue
        lp = site["log_prob"]
        lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape))
        other = [d for d in range(ndim) if d not in keep]
        total = total + (lp.sum(other) if other else lp)
    return torch.as_tensor(total)


def _pyro_log_weights(
    model: Callable, guide: Callable, x: Any, num: int, plan: _Plan, program: Any, rows: dict | None = None
) -> Any:
    """``log w[k, i] = log p(x_i, z_ik) - log q(z_ik | x_i)``, shape ``(num, len(x))``; differentiable."""
    import pyro
    import pyro.poutine as poutine
    import torch

    def one(particles: bool) -> Any:
        guide_tr = poutine.trace(guide).get_trace(x, **(rows or {}))
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, **(rows or {}))
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        return _per_example(model_tr.nodes, plan, particles) - _per_example(guide_tr.nodes, plan, particles)

    if plan.vectorized:
        with pyro.plate(_PARTICLES, num, dim=-(plan.nesting + 1)):
            return one(True).expand(num, x.shape[0])
    return torch.stack([one(False).expand(x.shape[0]) for _ in range(num)])


def _pyro_loss(backend: ELBO, program: Any, plan: _Plan, *, jit: bool, names: tuple[str, ...] = ()) -> Callable:
    """``(x, inputs) -> -bound`` summed over the batch (Pyro's objective, or gmppl's Renyi/IWAE from
    log-weights); compiled (``jit``): ``(x, *values) -> -bound`` with the inputs ``names`` passed by position
    (Pyro's jit traces positional arguments only)."""
    import pyro
    import torch

    model, guide = program.fn, plan.guide
    if not isinstance(backend.objective, str):
        return lambda x, rows=None: plan.objective.differentiable_loss(model, guide, x, **(rows or {}))
    elbo = _pyro_objective(backend, plan, jit=jit)
    if jit and names:  # the same program and guide, called with the inputs by position

        def model(x: Any, *values: Any) -> Any:
            return program.fn(x, **dict(zip(names, values, strict=True)))

        def guide(x: Any, *values: Any) -> Any:
            return plan.guide(x, **dict(zip(names, values, strict=True)))

    if elbo is None:
        alpha, k = backend._alpha, backend.num_particles

        def renyi(x: Any, rows: dict | None = None) -> Any:
            lw = (1 - alpha) * _pyro_log_weights(model, guide, x, k, plan, program, rows)
            return -((torch.logsumexp(lw, 0) - math.log(k)) / (1 - alpha)).sum()

        if not jit:
            return renyi
        traced = pyro.ops.jit.trace(
            lambda x, *values: renyi(x, dict(zip(names, values, strict=True))), ignore_warnings=True
        )
        return _Compiled(traced, lambda: traced, lambda out: out)
    if not jit:
        return lambda x, rows=None: elbo.differentiable_loss(model, guide, x, **(rows or {}))
    if backend.objective == "trace":  # JitTrace_ELBO compiles (loss, surrogate loss)
        return _Compiled(
            lambda *args: elbo.differentiable_loss(model, guide, *args),
            lambda: elbo._loss_and_surrogate_loss,
            lambda out: out[0] + (out[1] - out[1].detach()),
        )
    return _Compiled(
        lambda *args: elbo.differentiable_loss(model, guide, *args), lambda: elbo._differentiable_loss, lambda out: out
    )


class _Compiled:
    """A loss compiled by Pyro's jit (``pyro.ops.jit.trace``: ``torch.jit.trace`` with parameter plumbing).

    The first call traces; later calls run the TorchScript artifact directly with the parameter tensors
    looked up once, where ``pyro.ops.jit`` looks every parameter up through the effect-handler stack on
    each call (a sizeable part of a small network's step). The optimiser, restores and loads all update
    parameters in place, so the cached tensors stay the live ones. The graph runs without the TorchScript
    executor's optimisations: its own autodiff is slower than autograd over the same ops for small networks.
    """

    def __init__(self, first: Callable, compiled_function: Callable[[], Any], output: Callable):
        self.first, self.compiled_function, self.output = first, compiled_function, output
        self.run: Callable | None = None

    def __call__(self, *args: Any) -> Any:
        import torch

        if self.run is not None:
            with torch.jit.optimized_execution(False):
                return self.output(self.run(*args))
        import pyro

        out = self.first(*args)
        cf = self.compiled_function()
        (graph,) = cf.compiled.values()
        # Pyro types pyro.param as returning a Tensor, but the tensor it returns also has .unconstrained()
        params = tuple(pyro.param(name).unconstrained() for name in cf._param_names)  # type: ignore[attr-defined]
        self.run = lambda *args: graph(*params, *args)
        return out


def _pyro_training_loss(backend: ELBO, program: Any, plan: _Plan, batch: Any, rows: dict) -> Callable:
    """The compiled loss when ``jit`` and it agrees with the uncompiled one; else the uncompiled loss.

    The check runs both on the batch reversed (not the one traced; the inputs reversed with it) from the same
    random state, so a trace that baked in values read from its batch (data-dependent structure) is caught.
    """
    import torch

    eager = _pyro_loss(backend, program, plan, jit=False)
    plan.cache["compiled"] = False
    one_particle = backend.num_particles == 1 and backend._alpha == 0.0  # no particle plate to broadcast over
    if not (backend.jit and isinstance(backend.objective, str) and (plan.vectorized or one_particle)):
        return eager
    names = tuple(rows)
    compiled = _pyro_loss(backend, program, plan, jit=True, names=names)
    devices = [program.device] if program.device.type == "cuda" else []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer notes
            compiled(batch, *rows.values())  # traces
            other, flipped = batch.flip(0), {k: v.flip(0) for k, v in rows.items()}
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                a = eager(other, flipped).detach()
                torch.manual_seed(0)
                b = compiled(other, *flipped.values()).detach()
    except Exception as e:
        log.warning("ELBO: the loss could not be compiled (%s: %s); running it uncompiled.", type(e).__name__, e)
        return eager
    if not torch.allclose(a, b, rtol=1e-3, atol=1e-3):
        log.warning(
            "ELBO: the compiled loss differs from the uncompiled one (%s vs %s): the program's structure depends "
            "on its inputs, so it runs uncompiled. Pass ELBO(jit=False) to skip the check.",
            float(b),
            float(a),
        )
        return eager
    plan.cache["compiled"] = True
    return lambda x, rows=None: compiled(x, *((rows or {})[k] for k in names))


def _seeded(program: Any, seed: int | None) -> Any:
    import contextlib

    import torch

    if seed is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[program.device] if program.device.type == "cuda" else []))
    torch.manual_seed(seed)
    return stack


def _pyro_log_weights_np(
    program: Any, plan: _Plan, x: Any, k: int, seed: int, rows: dict, chunk: int = 100
) -> np.ndarray:
    import torch

    with torch.no_grad(), program.scope(), _seeded(program, seed):
        parts = [
            _pyro_log_weights(program.fn, plan.guide, x, min(chunk, k - s), plan, program, rows).cpu().double()
            for s in range(0, k, chunk)
        ]
    return torch.cat(parts).numpy()


def _pyro_posterior(program: Any, plan: _Plan, x: Any, num: int, seed: int | None, rows: dict) -> Any:
    import pyro
    import pyro.poutine as poutine
    import torch

    name = plan.latents[0] if len(plan.latents) == 1 else program.latent
    with torch.no_grad(), program.scope(), _seeded(program, seed):
        if plan.vectorized:
            with pyro.plate(_PARTICLES, num, dim=-(plan.nesting + 1)):
                return poutine.trace(plan.guide).get_trace(x, **rows).nodes[name]["value"]
        draws: list[Any] = [poutine.trace(plan.guide).get_trace(x, **rows).nodes[name]["value"] for _ in range(num)]
        return torch.stack(draws)


def _pyro_draw_terms(
    program: Any, plan: _Plan, x: Any, num: int, seed: int, name: str, rows: dict
) -> dict[str, np.ndarray]:
    """``num`` joint draws ``z_s ~ q(. | x)`` and, per draw and example, ``log p(x_i | z_si)``,
    ``log p(z_si)`` and ``log q(z_si | x_i)`` (numpy, float64; see ``ELBO.arviz_groups``)."""
    import pyro
    import pyro.poutine as poutine
    import torch

    obs = program.observed

    def one(particles: bool) -> tuple:
        guide_tr = poutine.trace(plan.guide).get_trace(x, **rows)
        model_tr = poutine.trace(poutine.replay(program.fn, trace=guide_tr)).get_trace(x, **rows)
        model_tr.compute_log_prob()
        guide_tr.compute_log_prob()
        n = x.shape[0]
        shape = (num, n) if particles else (n,)
        return (
            guide_tr.nodes[name]["value"],
            _per_example(model_tr.nodes, plan, particles, lambda k: k == obs).expand(shape),
            _per_example(model_tr.nodes, plan, particles, lambda k: k != obs).expand(shape),
            _per_example(guide_tr.nodes, plan, particles).expand(shape),
        )

    with torch.no_grad(), program.scope(), _seeded(program, seed):
        if plan.vectorized:
            with pyro.plate(_PARTICLES, num, dim=-(plan.nesting + 1)):
                parts = one(True)
        else:
            parts = tuple(torch.stack(p) for p in zip(*(one(False) for _ in range(num)), strict=True))
    z, ll, lp, lq = (p.cpu().double().numpy() for p in parts)
    return {"z": z, "ll": ll, "lp": lp, "lq": lq}


# ====================================================================== NumPyro / JAX
def _numpyro_objective(backend: ELBO) -> Any:
    from numpyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

    if not isinstance(backend.objective, str):
        return backend.objective
    k = backend.num_particles
    return {
        "trace": lambda: Trace_ELBO(num_particles=k),
        "meanfield": lambda: TraceMeanField_ELBO(num_particles=k),
        "renyi": lambda: RenyiELBO(alpha=backend._alpha, num_particles=k),
        "iwae": lambda: RenyiELBO(alpha=0.0, num_particles=k),
    }[backend.objective]()


def _numpyro_setup(backend: ELBO, program: Any, info: ModelInfo, example: np.ndarray, seed: int, inputs: dict) -> _Plan:
    import jax
    from numpyro import handlers
    from numpyro.distributions import constraints
    from numpyro.distributions.transforms import biject_to

    from gmppl.engines.numpyro import first_rows

    x, rows = program.as_array(example), program.as_inputs(inputs)
    key = jax.random.PRNGKey(seed)
    model_tr = program.trace(program.params, key, x=x, inputs=rows)
    guide = backend.guide or AmortizedNormal()
    if isinstance(guide, AmortizedNormal):
        site = _latent_site(model_tr, program.latent, program.observed, info.x_event_shape, len(example))
        if f"{MODULE_NAME}$params" in program.params:
            raise BackendError(f"the model registers a module named {MODULE_NAME!r}, the default guide's name.")
        guide = guide.build("numpyro", site, seed=seed, inputs=rows)
    else:
        guide = _guide(backend, program, rows)
    try:
        guide_tr = handlers.trace(
            handlers.seed(handlers.substitute(guide, data=program.constrain(program.params)), key)
        )
        guide_tr = guide_tr.get_trace(x, **rows)
    except Exception as e:
        raise ModelError(
            f"running the guide failed: {type(e).__name__}: {e}. gmppl calls it as the model is called."
        ) from e
    params = dict(program.params)
    for name, s in guide_tr.items():
        if s["type"] == "param" and name not in params:
            c = s["kwargs"].get("constraint", constraints.real)
            program.constraints[name] = c
            params[name] = s["value"] if c is constraints.real else biject_to(c).inv(s["value"])
    program.params = jax.device_put(params, program.device)
    _check_match(model_tr, guide_tr)
    constrained = program.constrain(params)

    def latent_shapes(m: int) -> dict:  # on abstract values: a run at another size would compile every op again
        def latents(xs: Any, rs: dict) -> dict:
            run = handlers.seed(handlers.substitute(guide, data=constrained), key)
            return {k: site["value"] for k, site in _latents(handlers.trace(run).get_trace(xs, **rs)).items()}

        return {k: v.shape for k, v in jax.eval_shape(latents, *first_rows((x, rows), m)).items()}

    _check_other_batch_size(latent_shapes, len(x), guide_tr)
    model_tr = handlers.trace(
        handlers.replay(handlers.seed(handlers.substitute(program.fn, data=program.constrain(params)), key), guide_tr)
    ).get_trace(x, **rows)
    plan = _plan(model_tr, guide_tr, guide, program.observed, len(example))
    plan.objective = _numpyro_objective(backend)
    _check_objective_engine(plan.objective, "numpyro.infer", "NumPyro")
    return plan


def _jax_log_weights_fn(program: Any, plan: _Plan) -> Callable:
    """Jitted ``(params, x, keys, inputs) -> log w`` of shape ``(len(keys), len(x))``."""
    import jax
    import jax.numpy as jnp

    per_example = _jax_per_example(plan)

    def one(params: Any, x: Any, key: Any, rows: dict) -> Any:
        guide_tr, model_tr = _jax_traces(program, plan, params, x, key, rows)
        return jnp.broadcast_to(per_example(model_tr) - per_example(guide_tr), (x.shape[0],))

    return jax.jit(jax.vmap(one, in_axes=(None, None, 0, None)))


def _jax_traces(program: Any, plan: _Plan, params: Any, x: Any, key: Any, rows: dict) -> tuple[dict, dict]:
    """One guide draw ``z ~ q(z|x)`` and the model replayed on it: ``(guide trace, model trace)``."""
    import jax
    from numpyro import handlers

    c = program.constrain(params)
    kg, km = jax.random.split(key)
    guide_tr = handlers.trace(handlers.seed(handlers.substitute(plan.guide, data=c), kg)).get_trace(x, **rows)
    model = handlers.seed(handlers.substitute(program.fn, data=c), km)
    return guide_tr, handlers.trace(handlers.replay(model, guide_tr)).get_trace(x, **rows)


def _jax_per_example(plan: _Plan) -> Callable:
    """``(trace, only=None) -> per-example sum`` of the (kept) sample sites' log-densities."""
    import jax.numpy as jnp

    other = tuple(d for d in range(plan.nesting) if d != plan.nesting + int(plan.data_dim or 0))

    def per_example(tr: dict, only: Callable[[str], bool] | None = None) -> Any:
        total: Any = 0.0
        for name, s in _sample_sites(tr).items():
            if only is not None and not only(name):
                continue
            lp = s["fn"].log_prob(s["value"])
            lp = lp if s.get("scale") is None else s["scale"] * lp
            total = total + jnp.reshape(lp, (1,) * (plan.nesting - lp.ndim) + lp.shape).sum(other)
        return total

    return per_example


def _jax_draw_terms(
    program: Any, plan: _Plan, x: Any, num: int, seed: int, name: str, rows: dict
) -> dict[str, np.ndarray]:
    """As ``_pyro_draw_terms``: ``num`` guide draws and their per-example log-densities (jitted, vmapped)."""
    import jax
    import jax.numpy as jnp

    if plan.cache.get("draw_terms", (None,))[0] != name:
        obs = program.observed
        per_example = _jax_per_example(plan)

        def one(params: Any, x: Any, key: Any, rows: dict) -> tuple:
            guide_tr, model_tr = _jax_traces(program, plan, params, x, key, rows)
            n = (x.shape[0],)
            return (
                guide_tr[name]["value"],
                jnp.broadcast_to(per_example(model_tr, lambda k: k == obs), n),
                jnp.broadcast_to(per_example(model_tr, lambda k: k != obs), n),
                jnp.broadcast_to(per_example(guide_tr), n),
            )

        plan.cache["draw_terms"] = (name, jax.jit(jax.vmap(one, in_axes=(None, None, 0, None))))
    keys = jax.random.split(jax.random.PRNGKey(seed), num)
    fn = plan.cache["draw_terms"][1]
    z, ll, lp, lq = (np.asarray(v, dtype=np.float64) for v in fn(program.params, program.as_array(x), keys, rows))
    return {"z": z, "ll": ll, "lp": lp, "lq": lq}


def _jax_log_weights_np(
    program: Any, plan: _Plan, x: Any, k: int, seed: int, rows: dict, chunk: int = 100
) -> np.ndarray:
    import jax

    fn = plan.cache.get("log_weights") or plan.cache.setdefault("log_weights", _jax_log_weights_fn(program, plan))
    x = program.as_array(x)
    size = min(chunk, k)
    keys = jax.random.split(jax.random.PRNGKey(seed), math.ceil(k / size) * size).reshape(-1, size, 2)
    parts = [np.asarray(fn(program.params, x, kk, rows), dtype=np.float64) for kk in keys]
    return np.concatenate(parts)[:k]


def _jax_posterior(program: Any, plan: _Plan, x: Any, num: int, key: Any, rows: dict) -> Any:
    import jax
    from numpyro import handlers

    name = plan.latents[0] if len(plan.latents) == 1 else program.latent
    if "posterior" not in plan.cache:

        def one(params: Any, x: Any, key: Any, rows: dict) -> Any:
            guide = handlers.seed(handlers.substitute(plan.guide, data=program.constrain(params)), key)
            return handlers.trace(guide).get_trace(x, **rows)[name]["value"]

        plan.cache["posterior"] = jax.jit(jax.vmap(one, in_axes=(None, None, 0, None)))
    return plan.cache["posterior"](program.params, program.as_array(x), jax.random.split(key, num), rows)
