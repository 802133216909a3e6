"""The JAX/NumPyro ``ContinuousFlow`` distribution: pure, jittable ODE sampling, inversion and likelihood (diffrax).

See ``gmppl.models.continuous_flow`` for the maths.
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
from gmppl.models.continuous_flow import STAGES, FlowOptions, check_context_rows, check_field, probe_shape


def jax_event_shape(net: Any, context: Any = None) -> tuple[int, ...]:
    """``net.event_shape`` if set, else the vector size found by abstract evaluation (no compute)."""
    if getattr(net, "event_shape", None) is not None:
        return tuple(net.event_shape)
    extra = () if context is None else (jax.ShapeDtypeStruct((1, *context.shape[1:]), context.dtype),)

    def call(d: int) -> tuple[int, ...]:
        x = jax.ShapeDtypeStruct((1, d), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        return tuple(jax.eval_shape(net, x, t, *extra).shape)

    return probe_shape(call)


def _solver(name: str) -> Any:
    import diffrax

    return {"dopri5": diffrax.Dopri5, "euler": diffrax.Euler, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint}[
        name
    ]()


class JaxContinuousFlow(ndist.Distribution):
    """A continuous normalising flow over ``event_shape``; build it with ``gm.models.ContinuousFlow``.

    ``context`` (when given) has shape ``batch_shape + context_row_shape``.
    """

    arg_constraints: dict = {}
    reparametrized_params: list = []
    has_rsample = False  # samples are solved under stop_gradient (numpyro would infer True from no parameters)
    pytree_data_fields = ("velocity_net", "context")
    pytree_aux_fields = ("options",)
    gmppl_velocity_model = True
    # The ODE likelihood is for evaluation, so backends that train through log_prob refuse the model;
    # gm.inference.FlowMatching fits it.
    gmppl_has_log_prob = False

    def __init__(
        self,
        velocity_net: Any,
        event_shape: tuple[int, ...],
        batch_shape: tuple[int, ...] = (),
        options: FlowOptions | None = None,
        validate_args: Any = None,
        *,
        context: Any = None,
    ):
        self.velocity_net, self.context = velocity_net, context
        self.options = options or FlowOptions()
        super().__init__(tuple(batch_shape), tuple(event_shape), validate_args=False)

    @property
    def support(self) -> Any:
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any) -> JaxContinuousFlow:
        batch_shape = tuple(batch_shape)
        context = self.context
        if context is not None:
            check_context_rows(tuple(self.batch_shape), batch_shape)
            context = jnp.broadcast_to(context, batch_shape + self._context_row_shape)
        return JaxContinuousFlow(self.velocity_net, tuple(self.event_shape), batch_shape, self.options, context=context)

    # ------------------------------------------------------------------ pieces
    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def _context_row_shape(self) -> tuple[int, ...]:
        return () if self.context is None else tuple(self.context.shape[len(self.batch_shape) :])

    def context_rows(self, lead: tuple[int, ...]) -> Any:
        """The context broadcast to the batch dims ``lead`` (ending with ``batch_shape``), one row per example."""
        if self.context is None:
            return None
        row = self._context_row_shape
        return jnp.broadcast_to(self.context, tuple(lead) + row).reshape(-1, *row)

    def velocity(self, x: Any, t: Any, context: Any = None) -> Any:
        """``v(x, t)`` on a batch ``x`` of shape ``(B, *event_shape)``, ``t`` scalar or ``(B,)``; ``context``
        ``(B, ...)`` rows for a conditional flow."""
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        if context is None:
            return self.velocity_net(x, t)
        return self.velocity_net(x, t, context)

    # ------------------------------------------------------------------ sampling
    def sample(self, key: Any, sample_shape: tuple = ()) -> Any:
        if reading_shapes():  # model inspection: the velocity net checked abstractly, no solve
            shape = tuple(sample_shape) + tuple(self.batch_shape)
            x = jax.ShapeDtypeStruct((math.prod(shape), *self.event_shape), jnp.zeros(()).dtype)
            check_field(jax.eval_shape(lambda x: self.velocity(x, 0.5, self.context_rows(shape)), x), x, "velocity")
            return jnp.zeros(shape + tuple(self.event_shape))
        return jax.lax.stop_gradient(_generate_jit(self, key, tuple(sample_shape)))

    def generate(
        self, key: Any, sample_shape: tuple[int, ...] | int = (), *, solver: str | None = None,
        steps: int | None = None, record: int = 0,
    ) -> tuple[Any, dict]:  # fmt: skip
        """Draws shaped ``sample_shape + batch_shape + event_shape`` (an int ``n`` means ``(n,)``) and
        ``{"nfe": velocity evaluations, "trajectory": (record, ...) states from t = 0 to 1}``; jittable."""
        shape = ((sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)) + tuple(self.batch_shape)
        z = jax.random.normal(key, (math.prod(shape), *self.event_shape))
        x, info = self.transform(z, self.context_rows(shape), solver=solver, steps=steps, record=record)
        traj = info["trajectory"]
        if traj is not None:
            info["trajectory"] = traj.reshape(traj.shape[0], *shape, *self.event_shape)
        return x.reshape(*shape, *self.event_shape), info

    def transform(
        self, z: Any, context: Any = None, *, solver: str | None = None, steps: int | None = None, record: int = 0
    ) -> tuple[Any, dict]:
        """``x(1)`` from ``x(0) = z`` (rows ``(B, *event_shape)``) with the sampling solver, and
        ``{"nfe", "trajectory"}``; jittable."""
        solver, steps = self.options.solver_and_steps(solver, steps)
        return self._solve(z, context, 0.0, 1.0, solver, steps, record)

    def invert(self, x: Any, context: Any = None) -> Any:
        """``x(0)`` from ``x(1) = x``: the flow's inverse, by adaptive Dopri5 backwards in time; jittable."""
        return self._solve(x, context, 1.0, 0.0, "dopri5", 1, 0)[0]

    def _solve(
        self, y: Any, context: Any, t0: float, t1: float, solver: str, steps: int, record: int
    ) -> tuple[Any, dict]:
        import diffrax

        o = self.options
        term = diffrax.ODETerm(lambda t, x, args: self.velocity(x, t, context))
        control: Any
        if solver == "dopri5":
            ts = jnp.linspace(t0, t1, max(record, 2))
            control, dt0 = diffrax.PIDController(rtol=o.rtol, atol=o.atol), None
        else:
            grid = jnp.linspace(t0, t1, steps + 1)
            ts = grid[jnp.round(jnp.linspace(0, steps, max(record, 2))).astype(jnp.int32)]
            control, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / steps
        sol = diffrax.diffeqsolve(
            term, _solver(solver), t0=t0, t1=t1, dt0=dt0, y0=y, saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=control, max_steps=o.max_steps if solver == "dopri5" else steps,
        )  # fmt: skip
        nfe = sol.stats["num_steps"] * 6 + 1 if solver == "dopri5" else STAGES[solver] * steps
        return sol.ys[-1], {"nfe": nfe, "trajectory": sol.ys if record else None}

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, value: Any) -> Any:
        return self.log_prob_estimate(value)[0]

    def log_prob_estimate(
        self, value: Any, *, trace: str | None = None, probes: int | None = None, key: Any = None
    ) -> tuple[Any, Any, Any]:
        """``(log p(x), Hutchinson standard error or None, velocity evaluations)``; pure and jittable; each
        example's ODE solved to the tolerance (`gmppl.models.ode.per_example_rms`)."""
        import diffrax

        from gmppl.models.ode import per_example_rms

        o = self.options
        k = len(self.event_shape)
        batch = tuple(value.shape[: value.ndim - k])
        x1 = value.reshape(-1, *self.event_shape)
        c = self.context_rows(batch)
        exact, probes = o.trace_and_probes(self.dim, trace, probes)
        n = x1.shape[0]
        x1 = jnp.tile(x1, (probes, *[1] * k))
        c = None if c is None else jnp.tile(c, (probes, *[1] * (c.ndim - 1)))
        key = jax.random.PRNGKey(0) if key is None else key
        e = None if exact else jax.random.rademacher(key, x1.shape, dtype=x1.dtype)
        d = self.dim

        def dynamics(t: Any, state: tuple, args: Any) -> tuple:
            x = state[0]

            def f(y: Any) -> Any:
                return self.velocity(y, t, c)

            if exact:
                basis = jnp.eye(d, dtype=x.dtype).reshape(d, 1, *self.event_shape)
                basis = jnp.broadcast_to(basis, (d, *x.shape))
                out, jv = jax.vmap(lambda b: jax.jvp(f, (x,), (b,)))(basis)
                div = jnp.einsum("ibi->b", jv.reshape(d, x.shape[0], d))
                velocity = out[0]
            else:
                velocity, jv = jax.jvp(f, (x,), (e,))
                div = (jv * e).reshape(x.shape[0], -1).sum(1)
            return velocity, div

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(dynamics), diffrax.Dopri5(), t0=1.0, t1=0.0, dt0=None,
            y0=(x1, jnp.zeros(x1.shape[0], x1.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=o.rtol, atol=o.atol, norm=per_example_rms),
            max_steps=o.max_steps,
        )  # fmt: skip
        x0, ell = sol.ys[0][-1], sol.ys[1][-1]
        flat = x0.reshape(x0.shape[0], -1)
        lp = (-0.5 * jnp.sum(flat**2, axis=1) - 0.5 * d * math.log(2 * math.pi) + ell).reshape(probes, n)
        mean = lp.mean(0).reshape(batch)
        se = None if probes < 2 else (lp.std(0, ddof=1) / math.sqrt(probes)).reshape(batch)
        return mean, se, sol.stats["num_steps"] * 6 + 1


@eqx.filter_jit
def _generate_jit(d: JaxContinuousFlow, key: Any, sample_shape: tuple) -> Any:
    """``d.generate(key, sample_shape)`` compiled once per network structure, shapes and options (model
    inspection samples eagerly, twice per ``gm.fit``)."""
    return d.generate(key, sample_shape)[0]
