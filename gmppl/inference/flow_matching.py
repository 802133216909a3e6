"""Flow matching: fit a ``gm.models.ContinuousFlow`` by regressing its velocity on a conditional one.

A *conditional path* joins a noise draw ``x0 ~ N(0, I)`` to a data point ``x1``,
``x_t = a_t x0 + b_t x1`` for ``t in [0, 1]``, with velocity ``u_t = a'_t x0 + b'_t x1``. With
``a_t = sigma_min + (1 - sigma_min) k_t``:

* ``path="ot"`` (rectified flow; Lipman et al. 2023; Liu et al. 2023): ``k_t = 1 - t``, ``b_t = t``, so
  ``x_t = (1 - (1 - sigma_min) t) x0 + t x1`` and ``u_t = x1 - (1 - sigma_min) x0``;
* ``path="vp"`` (variance preserving; Albergo & Vanden-Eijnden 2023, Tong et al. 2024):
  ``k_t = cos(pi t / 2)``, ``b_t = sin(pi t / 2)``.

Both start at ``x0`` and end at ``x1 + sigma_min x0``: the model's ``p_1`` is the data convolved with
``N(0, sigma_min^2 I)``. The conditional flow-matching loss (Lipman et al. 2023, thm 2)

    L(theta) = E_{t ~ U(0, 1)} E_{(x0, x1)} || v_theta(x_t, t) - u_t ||^2

has the same gradient as the regression on the *marginal* velocity ``v*(x, t) = E[u_t | x_t = x]``, whose
flow carries ``N(0, I)`` at ``t = 0`` to ``p_1`` at ``t = 1``; the minimum ``L(v*) = E_t E tr Cov(u_t | x_t)``
is not zero (``history["loss"]`` records ``L``, not the gap to it).

``coupling`` says how ``x0`` and ``x1`` are paired within a minibatch: ``"independent"`` draws them
independently; ``"minibatch_ot"`` (Tong et al. 2024; Pooladian et al. 2023) re-pairs the batch's noise
with its data by the exact optimal-transport assignment for squared Euclidean costs (POT's ``ot.emd``,
on the host: numpy per step on torch, a ``jax.pure_callback`` inside the jitted loop on JAX), which
straightens the learned paths (fewer solver steps at sampling). Each data point keeps one noise draw (the
assignment, not draws from the plan). With a conditional flow (``context=``), ``minibatch_ot`` is refused:
pairing across contexts would make ``x0 | c`` differ from the ``N(0, I)`` the flow starts from.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

import array_api_compat as aac
import numpy as np

from gmppl.engines.base import ModelInfo
from gmppl.errors import BackendError, NotSupported, UnknownName
from gmppl.inference.base import Backend
from gmppl.models.continuous_flow import find_flow

PATHS = ("ot", "vp")
COUPLINGS = ("independent", "minibatch_ot")


def path_coefficients(path: str, sigma_min: float, t: Any) -> tuple[Any, Any, Any, Any]:
    """``(a_t, a'_t, b_t, b'_t)`` of the conditional path ``x_t = a_t x0 + b_t x1`` (any array ``t``)."""
    xp = aac.array_namespace(t)
    if path == "ot":
        k, dk, b, db = 1.0 - t, 0.0 * t - 1.0, t, 0.0 * t + 1.0
    elif path == "vp":
        h = 0.5 * math.pi
        k, dk, b, db = xp.cos(h * t), -h * xp.sin(h * t), xp.sin(h * t), h * xp.cos(h * t)
    else:
        raise UnknownName(f"path={path!r} is unknown; use one of {PATHS}.")
    return sigma_min + (1.0 - sigma_min) * k, (1.0 - sigma_min) * dk, b, db


def ot_pairing(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """``perm`` such that pairing ``x0[perm[j]]`` with ``x1[j]`` minimises ``sum_j ||x0[perm[j]] - x1[j]||^2``.

    The exact OT plan between the two uniform empirical measures (``ot.emd`` on squared Euclidean costs) is
    a vertex of the Birkhoff polytope, a permutation matrix divided by ``n``.
    """
    import ot

    n = len(x0)
    a = np.asarray(x0, dtype=np.float64).reshape(n, -1)
    b = np.asarray(x1, dtype=np.float64).reshape(n, -1)
    w = np.full(n, 1.0 / n)
    plan = ot.emd(w, w, ot.dist(a, b), numItermax=max(100_000, 50 * n * n))
    perm = plan.argmax(0)
    if len(np.unique(perm)) != n:  # not a vertex (never seen): fall back to the assignment solver
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(ot.dist(a, b))
        perm = np.empty(n, dtype=np.int64)
        perm[cols] = rows
    return perm.astype(np.int32)


@dataclass(frozen=True)
class FlowMatchingPlan:
    """What a flow-matching fit knows of its program: (torch) the flow found at the first step, jitted
    evaluations (JAX)."""

    cache: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FlowMatching(Backend):
    """Fit a ``gm.models.ContinuousFlow`` by conditional flow matching (see the module docstring).

    Example::

        fit = gm.fit(flow_model, x, gm.inference.FlowMatching(coupling="minibatch_ot"), steps=5000)
        fit.sample(1000); fit.log_prob(x_test)      # exact ODE likelihood
    """

    path: str = "ot"
    sigma_min: float = 0.0
    coupling: str = "independent"

    requires: ClassVar[frozenset[str]] = frozenset({"velocity_field"})

    def __post_init__(self) -> None:
        if self.path not in PATHS:
            raise UnknownName(f"FlowMatching(path={self.path!r}) is unknown; use one of {PATHS}.")
        if self.coupling not in COUPLINGS:
            raise UnknownName(f"FlowMatching(coupling={self.coupling!r}) is unknown; use one of {COUPLINGS}.")
        s = self.sigma_min
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= float(s) < 1.0:
            raise BackendError(f"FlowMatching(sigma_min={s!r}) must be a number in [0, 1).")
        object.__setattr__(self, "sigma_min", float(s))  # a plain float: saved with the fit, rebuilt on load

    def prepare(
        self, program: Any, info: ModelInfo, example: Any, *, seed: int, inputs: dict | None = None
    ) -> FlowMatchingPlan:
        d = find_flow(info.obs_dist)
        if self.coupling == "minibatch_ot" and d is not None and d.context is not None:
            raise BackendError(
                "FlowMatching(coupling='minibatch_ot') pairs noise with data across the batch, so for a conditional "
                "flow (context=) the noise given the context would no longer be N(0, I); use coupling='independent'."
            )
        return FlowMatchingPlan()

    # ------------------------------------------------------------------ torch
    def torch_init(self, program: Any, plan: FlowMatchingPlan, batch: Any, inputs: dict | None, optim: Any) -> Any:
        # The torch network is a stateful module whose leaves are the param store's: find it once (a
        # conditional flow's context is the batch's inputs, so it is found at every step).
        d = _torch_flow(program, batch, inputs)
        if d.context is None:
            plan.cache["flow"] = d
        return super().torch_init(program, plan, batch, inputs, optim)

    def torch_loss(
        self, program: Any, plan: FlowMatchingPlan, batch: Any, inputs: dict | None = None
    ) -> tuple[Any, dict]:
        import torch

        d = plan.cache.get("flow") or _torch_flow(program, batch, inputs)
        x1 = batch.to(d._like(batch)["dtype"])
        x0 = torch.randn_like(x1)
        if self.coupling == "minibatch_ot":
            perm = ot_pairing(x0.detach().cpu().numpy(), x1.detach().cpu().numpy())
            x0 = x0[torch.as_tensor(perm, device=x0.device, dtype=torch.long)]
        t = torch.rand(x1.shape[0], dtype=x1.dtype, device=x1.device)
        shape = (-1,) + (1,) * (x1.dim() - 1)
        a, da, b, db = (c.reshape(shape) for c in path_coefficients(self.path, self.sigma_min, t))
        v = d.velocity(a * x0 + b * x1, t, d.context_rows((x1.shape[0],)))
        per = (v - (da * x0 + db * x1)).square().reshape(x1.shape[0], -1).sum(1)
        return per.mean(), {}

    # ------------------------------------------------------------------ JAX
    def jax_loss(self, program: Any, plan: FlowMatchingPlan) -> Any:
        import jax
        import jax.numpy as jnp

        path, sigma_min, ot = self.path, self.sigma_min, self.coupling == "minibatch_ot"

        def loss(params: Any, batch: Any, key: Any, inputs: Any = None) -> tuple[Any, dict]:
            k_trace, k0, kt = jax.random.split(key, 3)
            d = _jax_flow(program, params, k_trace, batch, inputs)
            x1 = batch
            x0 = jax.random.normal(k0, x1.shape, x1.dtype)
            if ot:
                x0 = x0[jax_ot_pairing(x0, x1)]
            t = jax.random.uniform(kt, (x1.shape[0],), x1.dtype)
            shape = (-1, *[1] * (x1.ndim - 1))
            a, da, b, db = (c.reshape(shape) for c in path_coefficients(path, sigma_min, t))
            v = d.velocity(a * x0 + b * x1, t, d.context_rows((x1.shape[0],)))
            per = jnp.square(v - (da * x0 + db * x1)).reshape(x1.shape[0], -1).sum(1)
            return per.mean(), {}

        return loss

    # ------------------------------------------------------------------ evaluation
    def log_prob(
        self, program: Any, plan: FlowMatchingPlan, x: Any, *, inputs: dict | None = None, **kwargs: Any
    ) -> Any:
        """Per-example ``log p(x_i)`` (given each row's inputs) by the instantaneous change of variables.

        Keywords: ``trace="auto"|"exact"|"hutchinson"``, ``probes`` (Hutchinson probes per example),
        ``return_stderr=True`` to get ``(log p, standard error)`` (None for the exact trace).
        """
        return_stderr = kwargs.pop("return_stderr", False)
        unknown = set(kwargs) - {"trace", "probes"}
        if unknown:
            raise BackendError(f"FlowMatching.log_prob got unknown keywords {sorted(unknown)}; use trace=, probes=.")
        if program.engine == "pyro":
            with program.scope():  # this chain's weights (chains may share a module), threads, device
                lp, se, _ = _torch_flow(program, x, inputs).log_prob_estimate(x, **kwargs)
        else:
            fn = _jax_log_prob(program, plan, kwargs.get("trace"), kwargs.get("probes"))
            lp, se = fn(program.params, x, program.as_inputs(inputs))
        return (lp, se) if return_stderr else lp

    def posterior(
        self,
        program: Any,
        plan: FlowMatchingPlan,
        x: Any,
        num_samples: int,
        *,
        seed: int | None = None,
        inputs: dict | None = None,
    ) -> Any:
        """``z = x(0)`` given ``x(1) = x`` (the flow's inverse; exact, so every draw is the same)."""
        if program.engine == "pyro":
            with program.scope():
                d = _torch_flow(program, x, inputs)
                z = d.invert(x, d.context_rows((x.shape[0],)))
            return z[None].expand(num_samples, *z.shape)
        import jax.numpy as jnp

        z = _jax_invert(program, plan)(program.params, x, program.as_inputs(inputs))
        return jnp.broadcast_to(z[None], (num_samples, *z.shape))


def jax_ot_pairing(x0: Any, x1: Any) -> Any:
    """:func:`ot_pairing` inside jitted (and vmapped) JAX code, through ``jax.pure_callback`` (no gradient)."""
    import jax
    import jax.numpy as jnp

    out = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    return jax.pure_callback(
        lambda a, b: ot_pairing(np.asarray(a), np.asarray(b)),
        out,
        jax.lax.stop_gradient(x0),
        jax.lax.stop_gradient(x1),
        vmap_method="sequential",
    )


def _torch_flow(program: Any, batch: Any, inputs: dict | None = None) -> Any:
    d = find_flow(program.trace(x=batch, inputs=inputs).nodes[program.observed]["fn"])
    if d is None:
        raise NotSupported(f"the observed site {program.observed!r} is not a gm.models.ContinuousFlow.")
    return d


def _jax_flow(program: Any, params: Any, key: Any, batch: Any, inputs: Any = None) -> Any:
    d = find_flow(program.trace(params, key, x=batch, inputs=inputs)[program.observed]["fn"])
    if d is None:
        raise NotSupported(f"the observed site {program.observed!r} is not a gm.models.ContinuousFlow.")
    return d


def _jax_log_prob(program: Any, plan: FlowMatchingPlan, trace: str | None, probes: int | None) -> Any:
    import jax

    key = ("log_prob", trace, probes)
    if key not in plan.cache:

        def fn(params: Any, x: Any, inputs: Any) -> Any:
            d = _jax_flow(program, params, jax.random.PRNGKey(0), x, inputs)
            lp, se, _ = d.log_prob_estimate(x, trace=trace, probes=probes)
            return lp, se

        plan.cache[key] = jax.jit(fn)
    return plan.cache[key]


def _jax_invert(program: Any, plan: FlowMatchingPlan) -> Any:
    import jax

    if "invert" not in plan.cache:

        def fn(params: Any, x: Any, inputs: Any) -> Any:
            d = _jax_flow(program, params, jax.random.PRNGKey(0), x, inputs)
            return d.invert(x, d.context_rows((x.shape[0],)))

        plan.cache["invert"] = jax.jit(fn)
    return plan.cache["invert"]
