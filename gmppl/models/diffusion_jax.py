"""The JAX/NumPyro ``Diffusion`` distribution: pure, jittable samplers (``lax.scan``, diffrax) and ODE likelihood.

See ``gmppl.models.diffusion`` for the maths; the per-step arithmetic is ``gmppl.models.sde``'s, shared with
torch. ODEs are solved with ``diffrax`` (Dopri5, PID step control).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as ndist
from numpyro.distributions import constraints

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


def jax_event_shape(net: Any, context: Any = None) -> tuple[int, ...]:
    """``net.event_shape`` if set, else the vector size found by abstract evaluation (no compute); a conditional
    network is probed as ``net(x, t, c)`` with ``c`` one context row."""
    if getattr(net, "event_shape", None) is not None:
        return tuple(net.event_shape)
    extra = () if context is None else (jax.ShapeDtypeStruct((1, *context.shape[1:]), context.dtype),)

    def call(d: int) -> tuple[int, ...]:
        x = jax.ShapeDtypeStruct((1, d), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        return tuple(jax.eval_shape(net, x, t, *extra).shape)

    return probe_event_shape(call)


class JaxDiffusion(ndist.Distribution):
    """A score-based diffusion model over ``event_shape``; build it with ``gm.models.Diffusion``.

    With ``context`` (``R`` rows) it is the conditional law ``p(x | c_i)``, one per row (batch shape ``(R,)``),
    and the network is called as ``score_net(x, t, c)``; ``null_context`` is the guidance's null row.
    """

    arg_constraints: dict = {}
    reparametrized_params: list = []
    pytree_data_fields = ("score_net", "context", "null_context")
    pytree_aux_fields = ("sde", "options")
    gmppl_score_model = True
    # The ODE likelihood is for evaluation (solved without gradients to the parameters), so backends
    # that train through log_prob (Likelihood, sliced Score) refuse the model; Score(method="dsm") fits it.
    gmppl_has_log_prob = False

    def __init__(
        self,
        score_net: Any,
        sde: SDE,
        event_shape: tuple[int, ...],
        batch_shape: tuple[int, ...] = (),
        options: DiffusionOptions | None = None,
        validate_args: Any = None,
        context: Any = None,
        null_context: Any = None,
    ):
        self.score_net, self.sde = score_net, sde
        self.options = options or DiffusionOptions()
        self.context, self.null_context = context, null_context
        super().__init__(tuple(batch_shape), tuple(event_shape), validate_args=False)

    @property
    def support(self) -> Any:
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any) -> JaxDiffusion:
        return JaxDiffusion(
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

    @property
    def guided(self) -> bool:
        """Whether sampling uses the classifier-free-guided score (a context and ``guidance != 0``)."""
        return self.context is not None and self.options.guidance != 0

    def score(self, x: Any, t: Any, *, guided: bool = False) -> Any:
        """``s_theta(x, t)``, or ``s_theta(x, t, c)`` given the context, on a batch ``x`` of shape
        ``(B, *event_shape)`` with ``t`` scalar or ``(B,)``; ``guided`` (with ``guidance=w != 0``):
        ``(1 + w) s_theta(x, t, c) - w s_theta(x, t, null)``."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        if self.context is None:
            return self.score_net(x, t)
        c = context_rows(jnp, self.context, x.shape[0])
        s = self.score_net(x, t, c)
        if guided and self.guided:
            s = guided_score(s, self.score_net(x, t, null_context(jnp, c, self.null_context)), self.options.guidance)
        return s

    def ode_drift(self, x: Any, t: Any, *, guided: bool = False) -> Any:
        """``f~(x, t) = f(t) x - g(t)^2 s_theta(x, t) / 2``."""
        return probability_flow_drift(jnp, self.sde, x, t, self.score(x, t, guided=guided))

    # ------------------------------------------------------------------ sampling
    def sample(self, key: Any, sample_shape: tuple = ()) -> Any:
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        if reading_shapes():  # model inspection: the score net checked abstractly, no reverse process
            x = jax.ShapeDtypeStruct((math.prod(shape), *self.event_shape), jnp.zeros(()).dtype)
            check_field(jax.eval_shape(lambda x: self.score(x, 0.5, guided=self.guided), x), x, "score")
            return jnp.zeros(shape + tuple(self.event_shape))
        x = _generate_jit(self, key, math.prod(shape))
        return jax.lax.stop_gradient(x).reshape(shape + tuple(self.event_shape))

    def generate(
        self, key: Any, n: int, *, sampler: str | None = None, steps: int | None = None, record: int = 0
    ) -> tuple[Any, dict]:
        """``n`` draws and ``{"nfe": score evaluations, "trajectory": (record, n, ...)}``; pure and jittable.

        With a context of ``R`` rows, draw ``i`` is given row ``i mod R`` (``n`` a multiple of ``R``); with
        guidance each score evaluation counts twice (conditional and null).
        """
        o = self.options
        per = 2 if self.guided else 1
        sampler, steps = sampler or o.sampler, steps or o.steps
        eps = self.sde.t_eps
        k0, key = jax.random.split(key)
        x = self.sde.prior_std * jax.random.normal(k0, (n, *self.event_shape))
        if sampler == "ode":
            import diffrax

            ts = jnp.linspace(1.0, eps, max(record, 2))
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, y, args: self.ode_drift(y, t, guided=True)),
                diffrax.Dopri5(),
                t0=1.0,
                t1=eps,
                dt0=None,
                y0=x,
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=o.rtol, atol=o.atol),
                max_steps=o.max_steps,
            )
            info = {"nfe": (sol.stats["num_steps"] * 6 + 1) * per, "trajectory": sol.ys if record else None}
            return sol.ys[-1], info
        grid = jnp.linspace(1.0, eps, steps + 1)

        def body(x: Any, inp: Any) -> tuple[Any, Any]:
            i, k = inp
            t, dt = grid[i], grid[i] - grid[i + 1]
            kc, kp = jax.random.split(k)
            if sampler == "pc":
                for kk in jax.random.split(kc, o.corrector_steps):  # Langevin corrector at t
                    s = self.score(x, t, guided=True)
                    x = langevin_step(jnp, self.sde, x, t, dt, s, jax.random.normal(kk, x.shape), o.snr)
            s = self.score(x, t, guided=True)
            noise = jnp.where(i < steps - 1, jax.random.normal(kp, x.shape), 0.0)  # the last step is the mean
            return reverse_step(jnp, self.sde, x, t, dt, s, noise), (x if record else None)

        x, traj = jax.lax.scan(body, x, (jnp.arange(steps), jax.random.split(key, steps)))
        nfe = steps * (1 + (o.corrector_steps if sampler == "pc" else 0)) * per
        if record:
            idx = jnp.round(jnp.linspace(0, steps - 1, record - 1)).astype(jnp.int32)
            traj = jnp.concatenate([traj[idx], x[None]])
        return x, {"nfe": nfe, "trajectory": traj}

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, value: Any) -> Any:
        return self.log_prob_estimate(value)[0]

    def log_prob_estimate(
        self, value: Any, *, trace: str | None = None, probes: int | None = None, key: Any = None
    ) -> tuple[Any, Any, Any]:
        """``(log p(x), Hutchinson standard error or None, score evaluations)``; pure and jittable.

        Always the unguided model's likelihood, ``p(x | c)`` given each example's context row; each example's
        ODE solved to the tolerance (`gmppl.models.ode.per_example_rms`)."""
        import diffrax

        from gmppl.models.ode import per_example_rms

        o = self.options
        k = len(self.event_shape)
        batch = value.shape[: value.ndim - k]
        x0 = value.reshape(-1, *self.event_shape)
        exact = o.use_exact_trace(self.dim, trace)
        probes = 1 if exact else int(probes or o.probes)
        n = x0.shape[0]
        x0 = jnp.tile(x0, (probes, *[1] * k))
        key = jax.random.PRNGKey(0) if key is None else key
        v = None if exact else jax.random.rademacher(key, x0.shape, dtype=x0.dtype)
        d = self.dim

        def dynamics(t: Any, state: tuple, args: Any) -> tuple:
            x = state[0]

            def f(y: Any) -> Any:
                return self.ode_drift(y, t)

            if exact:
                basis = jnp.eye(d, dtype=x.dtype).reshape(d, 1, *self.event_shape)
                basis = jnp.broadcast_to(basis, (d, *x.shape))
                out, jv = jax.vmap(lambda e: jax.jvp(f, (x,), (e,)))(basis)
                jv = jv.reshape(d, x.shape[0], d)
                div = jnp.einsum("ibi->b", jv)
                drift = out[0]
            else:
                drift, jv = jax.jvp(f, (x,), (v,))
                div = (jv * v).reshape(x.shape[0], -1).sum(1)
            return drift, div

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(dynamics),
            diffrax.Dopri5(),
            t0=self.sde.t_eps,
            t1=1.0,
            dt0=None,
            y0=(x0, jnp.zeros(x0.shape[0], x0.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=o.rtol, atol=o.atol, norm=per_example_rms),
            max_steps=o.max_steps,
        )
        x1, div = sol.ys[0][-1], sol.ys[1][-1]
        lp = (self.sde.prior_logp(x1) + div).reshape(probes, n)
        mean = lp.mean(0).reshape(batch)
        se = None if probes < 2 else (lp.std(0, ddof=1) / math.sqrt(probes)).reshape(batch)
        return mean, se, sol.stats["num_steps"] * 6 + 1


@eqx.filter_jit
def _generate_jit(d: JaxDiffusion, key: Any, n: int) -> Any:
    """``d.generate(key, n)`` compiled once per network structure, shapes and options.

    Model inspection calls ``sample`` eagerly (twice per ``gm.fit``): without this each call compiled
    its own ``lax.scan`` of the reverse process; now they, and later fits of the same model, reuse one.
    """
    return d.generate(key, n)[0]
