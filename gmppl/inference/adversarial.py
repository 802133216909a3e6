r"""Adversarial training: variational divergence minimisation (f-GAN) and Wasserstein-1 (WGAN).

For an f-divergence, Fenchel duality gives the saddle point (``docs/design.md``, "Divergences and latent
variables")

    min_theta max_w  F(theta, w) = E_{x~P}[T_w(x)] - E_{y~P_theta}[f*(T_w(y))],   T_w = activation(V_w),

whose inner maximum is ``D_f(P || P_theta)`` when the critic family holds ``T* = f'(p/q)``
(Nowozin, Cseke & Tomioka 2016). For ``w1`` the Kantorovich–Rubinstein dual
``W1 = sup_{Lip(T) <= 1} E_P[T] - E_{P_theta}[T]`` with the Lipschitz constraint enforced by a
penalty on the critic's gradient at random interpolates ``x_hat`` of real and generated examples
(Gulrajani et al. 2017), or by spectral normalisation (Miyato et al. 2018). The default for ``w1``
is the one-sided penalty ``penalty * E[max(0, |grad T(x_hat)| - 1)^2]`` (``"one_sided_penalty"``,
WGAN-LP, Petzka et al. 2018); ``"gradient_penalty"`` is WGAN-GP's two-sided
``penalty * E[(|grad T(x_hat)| - 1)^2]``. Both bound the slope from above; the two-sided one also
pushes it *up* to 1 on every interpolate, so where the generated and real samples already agree the
critic keeps a unit slope and goes on pushing the generator about, where the optimal critic is flat
there; on the 8-Gaussian ring the two-sided penalty kept the generator off the ring where the one-sided
one found every mode (the runs are in ``examples/gan_ring.py``'s docstring).

The generator the fit returns is, by default (``ema=0.995``), the exponential moving average of its
iterates, ``bar_theta_t = d_t bar_theta_{t-1} + (1 - d_t) theta_t`` with ``d_t = min(ema, (1 + t) / (10 + t))``:
an average over about the last ``min(t / 9, 1 / (1 - ema))`` steps (Yazıcı et al. 2019; the
"generator EMA" of modern GANs). The players' iterates circle the saddle point rather than settle
on it; the average sits closer to it, so it puts more samples on the modes (most of all for ``w1``;
see ``examples/gan_ring.py``). The window, about 200 steps, is short enough not to lag a generator that is
still improving at the default learning rate: averaged over 1000 steps (``ema=0.999``) the same iterates put
fewer samples on the grid's modes; over 100 steps, no more. Training (the history, the critic) runs on the
iterates; ``ema=None`` returns the last one.

Defaults, one setting for all ten divergences (no per-divergence tuning): Adam(2e-3, betas (0.5, 0.9)) for both
players, the averaged generator, one critic step for the f-divergences and two for ``w1``. The learning rate is
ten times DCGAN's 2e-4, at which a generator needs thousands of steps to move its parameters by one unit;
``beta2 = 0.9`` (WGAN-GP's) lets Adam's second moment forget one large gradient in tens of steps, not thousands
(after a spike at 0.999 a player can sit frozen for the rest of the fit). The critic runs at the generator's
rate: at twice it (two time-scales, Heusel et al. 2017; this backend's earlier default) the 1-D fits were as
exact, the 2-D grid fits a little worse, and a wide generator much worse, its critic running ahead
(``examples/gan_digits.py``). WGAN-GP's own recipe for ``w1`` (Adam(1e-4) for both players, five critic steps)
needs far more than 10000 steps to spread a generator over many modes. At 2e-3 the ``w1`` critic needs a second
step (with one it fell behind and the generator collapsed on the 25-Gaussian grid); more steps, or a slower or
faster critic, did worse. The penalty weight stays at WGAN-GP's 10. On the grid ``w1`` still leaves more samples
between the modes than JS does in as many steps: its critic's slope is capped at 1, so it pushes the mass a
continuous generator strings between modes off less hard than a log-ratio critic. The runs behind each choice
are in ``examples/gan_ring.py``'s docstring and the README; the 1-D exactness tests
(``tests/inference/test_adversarial.py``) run on these defaults.

Each step does ``critic_steps`` ascent steps on ``F`` in ``w`` (fresh generated samples each, the
same real minibatch; default 1 for f-divergences, 2 for ``w1``), then one descent step in ``theta``: ``generator_loss="saddle"`` descends
``-E_{P_theta}[f*(T(y))]`` (the gradient of ``D_f`` itself at the optimal critic, by the envelope
theorem); ``"nonsaturating"`` descends ``-E_{P_theta}[T(y)]`` (Nowozin et al.'s alternative; for
``gan`` the ``-log D`` trick). ``f*(activation(v))`` is the divergence's fused, overflow-free
``conjugate_activation``, except for KL, reverse KL, Neyman, squared Hellinger and Jeffreys, whose
f-GAN maps hold ``exp(+-v)``: a critic chasing their unbounded optimal ``T*`` (``-q/p`` where the
generator has mass the data lack, ``1 + log(p/q)`` where the data have mass the generator lacks) drives
one term and its gradient past float32, and the fit goes NaN. These use a guarded exponential, ``exp(v)``
on ``|v| <= 20`` continued linearly beyond (see `_guarded_maps`): f-GAN's maps wherever a critic can use
them, the same family of ``T`` (so the same supremum), and linear growth in the critic's output. Jeffreys
takes the critic's output as a log density ratio, ``T = f'(e^v) = v + 1 - e^(-v)``,
``f*(T) = e^v + v - 1``, the form the others have (f-GAN's ``T = v`` makes a critic reach ``-q/p``
linearly, and it fell short).

History metrics per step: ``loss`` (the generator's objective: the saddle value
``E_P[T] - E_{P_theta}[f*(T)]`` for ``saddle``, ``-E_{P_theta}[T]`` for ``nonsaturating``),
``critic_loss`` (``-F`` plus any penalty), ``divergence`` (``F`` at the critic step: the running
variational lower bound on ``D_f``, or the W1 estimate), ``grad_norm`` (the generator's), and
``gradient_penalty`` / ``output_penalty`` when used. The critic sees real and generated examples in one batch (so a
critic with batch statistics would mix them; the default critics have none).

Total variation: its optimal critic is the step ``T* = sign(p - q) / 2``, which a critic reaches
by letting ``|V|`` grow without bound; with f-GAN's ``tanh(v) / 2`` both players' gradients then
vanish exponentially and the fit stalls short of the minimiser. Here TV uses ``T = v / (2 (1 + |v|))``
(the same range ``(-1/2, 1/2)``, so the same supremum ``D_TV``, but polynomial saturation) and, by
default, an output penalty ``1e-4 E[V^2]`` on the critic's raw output over the real and generated
batch: it keeps ``V`` finite, so the critic can follow the generator. The penalised critic sees a
smoothed TV whose minimiser tends to TV's as the weight goes to 0; 1e-4 keeps it within the 1-D test's
tolerance (``tests/inference/test_adversarial.py``; the runs are in the README's benchmarks).
``output_penalty`` sets the weight for any divergence (None: 1e-4 for TV, 0 otherwise); it is not part
of the reported ``divergence``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from gmppl import divergences
from gmppl.errors import BackendError, NotSupported, UnknownName
from gmppl.inference import averaging
from gmppl.inference.base import Backend
from gmppl.inference.critics import (
    CRITIC,
    jax_critic,
    spectral_normalise,
    torch_critic,
    torch_spectral_norm,
)
from gmppl.optim import Adam

_GENERATOR_LOSSES = ("saddle", "nonsaturating")
_LIPSCHITZ = ("auto", "gradient_penalty", "one_sided_penalty", "spectral_norm", None)
_PENALTIES = ("gradient_penalty", "one_sided_penalty")
_GUARDED = ("kl", "reverse_kl", "neyman", "squared_hellinger", "jeffreys")  # see `_guarded_maps`


@dataclass(frozen=True)
class AdversarialPlan:
    """What an adversarial fit adds to its program: the critic (a torch module, or a JAX ``apply(params, x)``
    whose parameters sit under ``CRITIC`` in the program's), and whether the model has a density."""

    density: bool
    critic: Any = None
    apply: Any = None


@dataclass(frozen=True)
class Adversarial(Backend):
    """Fit an implicit model (anything whose ``x`` can be sampled with gradients) adversarially.

    ``divergence``: a name or object from ``gm.divergences`` — ``kl``, ``reverse_kl``, ``pearson``,
    ``neyman``, ``squared_hellinger``, ``jeffreys``, ``js``, ``gan``, ``total_variation`` (f-GAN), or
    ``w1`` (a critic with a gradient penalty by default). ``critic``: None/``"mlp"`` (an MLP sized
    from the data), ``"conv"``, or a user module. ``lipschitz``: ``"one_sided_penalty"``,
    ``"gradient_penalty"`` (two-sided, WGAN-GP), ``"spectral_norm"`` or None; ``"auto"`` is the
    one-sided penalty for ``w1`` and None for f-divergences (see the module notes). ``optim`` is the
    generator's optimiser (``gm.fit(optim=...)`` overrides it), ``critic_optim`` the critic's (default: the
    generator's). Defaults, one setting for every divergence: Adam(2e-3, betas (0.5, 0.9)) for both players (a
    rate at which a generator moves in a few thousand steps, an Adam that recovers from one large gradient in
    tens of steps; see the module notes); one critic step for f-divergences, two for ``w1`` (whose critic, with
    one, fell behind a generator at this rate). ``output_penalty``: weight of ``E[V^2]`` in the critic's loss
    (None: ``1e-4`` for total variation, else 0; see the module notes). ``ema``: the fitted generator is the
    exponential moving average of its iterates with this decay (see the module notes); None keeps the last
    iterate.

    Example::

        fit = gm.fit(gan_model, x, gm.inference.Adversarial("js"), steps=20000, batch_size=256)
        fit.history["divergence"]  # the running lower bound on D_JS(P_X || P_theta)
    """

    divergence: Any = "js"
    critic: Any = None
    critic_steps: int | None = None
    generator_loss: str = "saddle"
    lipschitz: str | None = "auto"
    penalty: float = 10.0
    optim: Any = None
    critic_optim: Any = None
    output_penalty: float | None = None
    ema: float | None = 0.995

    requires: ClassVar[frozenset[str]] = frozenset({"reparameterized_sample"})

    def __post_init__(self) -> None:
        d = divergences.get(self.divergence)  # UnknownName for an unknown name
        if not isinstance(d, divergences.FDivergence | divergences.Wasserstein1):
            raise BackendError(
                f"divergence={self.divergence!r} has no critic (dual) form; Adversarial takes an f-divergence "
                f"({', '.join(c.name for c in divergences.FAMILY)}) or 'w1'."
            )
        if self.generator_loss not in _GENERATOR_LOSSES:
            raise UnknownName(f"generator_loss={self.generator_loss!r}; use one of {_GENERATOR_LOSSES}.")
        if self.lipschitz not in _LIPSCHITZ:
            raise UnknownName(f"lipschitz={self.lipschitz!r}; use one of {_LIPSCHITZ}.")
        if isinstance(d, divergences.Wasserstein1) and self.lipschitz is None:
            raise BackendError(
                "divergence='w1' needs a Lipschitz critic; use lipschitz='one_sided_penalty', 'gradient_penalty' or "
                "'spectral_norm'."
            )
        cs = self.critic_steps
        if cs is not None and (not isinstance(cs, int) or isinstance(cs, bool) or cs < 1):
            raise BackendError(f"critic_steps={self.critic_steps!r} must be a positive integer.")
        if not isinstance(self.penalty, int | float) or self.penalty < 0:
            raise BackendError(f"penalty={self.penalty!r} must be a number >= 0.")
        if self.output_penalty is not None and (
            not isinstance(self.output_penalty, int | float)
            or isinstance(self.output_penalty, bool)
            or self.output_penalty < 0
        ):
            raise BackendError(f"output_penalty={self.output_penalty!r} must be None or a number >= 0.")
        if self.ema is not None and (
            not isinstance(self.ema, int | float) or isinstance(self.ema, bool) or not 0 <= self.ema < 1
        ):
            raise BackendError(f"ema={self.ema!r} must be None or a decay in [0, 1) (e.g. 0.995).")
        if isinstance(self.critic, str) and self.critic not in ("mlp", "conv"):
            raise UnknownName(f"critic={self.critic!r}; use None, 'mlp', 'conv' or a module.")

    # ------------------------------------------------------------------ settings
    @functools.cached_property
    def div(self) -> Any:
        """The divergence object (looked up once: the torch step reads it, through ``constraint``,
        ``n_critic`` and ``output_weight``, several times per step)."""
        return divergences.get(self.divergence)

    @property
    def is_w1(self) -> bool:
        return isinstance(self.div, divergences.Wasserstein1)

    @property
    def constraint(self) -> str | None:
        """The Lipschitz constraint in force (``"auto"`` resolved)."""
        if self.lipschitz == "auto":
            return "one_sided_penalty" if self.is_w1 else None
        return self.lipschitz

    @property
    def n_critic(self) -> int:
        """Critic steps per generator step: ``critic_steps``, or by default 2 for ``w1`` and 1 for f-divergences
        (f-GAN's single-step alternation). The ``w1`` critic needs a second step to keep up with a generator at
        2e-3 (with one, it fell behind and the generator collapsed on the 25-Gaussian grid); three or five steps
        made the fit worse, not better (see the module notes)."""
        if self.critic_steps is not None:
            return int(self.critic_steps)
        return 2 if self.is_w1 else 1

    @property
    def output_weight(self) -> float:
        """The weight of the critic-output penalty in force: ``output_penalty``, or by default ``1e-4`` for
        total variation and 0 otherwise."""
        if self.output_penalty is not None:
            return float(self.output_penalty)
        return 1e-4 if isinstance(self.div, divergences.TotalVariation) else 0.0

    @property
    def default_optim(self) -> Any:
        """The generator's optimiser when ``gm.fit`` is given none: Adam(2e-3, betas=(0.5, 0.9)) for every
        divergence, ``w1`` included (WGAN-GP's Adam(1e-4) needs far more than 10000 steps to spread a generator
        over many modes; see the module notes)."""
        if self.optim is not None:
            return self.optim
        return Adam(lr=2e-3, betas=(0.5, 0.9))

    def critic_optimizer(self, optim: Any) -> Any:
        """The critic's optimiser given the generator's ``optim``: ``critic_optim``, or by default ``optim``
        itself (the same optimiser at the same rate; see the module notes for the runs against a critic at
        twice the rate)."""
        if self.critic_optim is not None:
            return self.critic_optim
        return optim

    def ema_decay(self, t: Any) -> Any:
        """The averaging weight at step ``t = 1, 2, ...`` (``gmppl.inference.averaging.decay``)."""
        assert self.ema is not None  # called only when averaged
        return averaging.decay(self.ema, t)

    # ------------------------------------------------------------------ the objective, engine-free
    def _maps(self, xp: Any = None) -> tuple[Any, Any]:
        """``(activation, f* o activation)`` on raw critic outputs; with ``xp`` the namespace is fixed
        once (no per-call dispatch in the torch loop)."""
        d = self.div
        if self.is_w1:
            return (lambda v: v), (lambda v: v)
        if isinstance(d, divergences.TotalVariation):
            return _softsign_half, _softsign_half  # f*(t) = t on |t| <= 1/2
        if d.name in _GUARDED:
            return _guarded_maps(d, xp)
        if xp is None:
            return d.activation, d.conjugate_activation
        return (lambda v: d._activation(xp, v)), (lambda v: d._conjugate_activation(xp, v))

    def _critic_objective(self, v_real: Any, v_fake: Any, maps: tuple[Any, Any]) -> tuple[Any, Any]:
        """``F = mean T(x_P) - mean f*(T(y_Q))`` from raw critic outputs (fused conjugate); also ``mean T(x_P)``."""
        act, conj = maps
        real = act(v_real).mean()
        return real - conj(v_fake).mean(), real

    def _generator_objective(self, v_fake: Any, maps: tuple[Any, Any]) -> Any:
        """What the generator descends: ``-E_Q f*(T)`` (saddle) or ``-E_Q T`` (non-saturating)."""
        act, conj = maps
        if self.generator_loss == "saddle" or self.is_w1:
            return -conj(v_fake).mean()
        return -act(v_fake).mean()

    # ------------------------------------------------------------------ setup
    def prepare(
        self, program: Any, info: Any, example: Any, *, seed: int, inputs: dict | None = None
    ) -> AdversarialPlan:
        """Build the critic and register it with the program's parameters (saved with the fit).

        With inputs, the critic sees each example with its inputs, ``T(x, y)`` on the concatenation of the
        flattened ``x`` and input rows (a conditional GAN); the default MLP critic is sized for it."""
        density = "density" in info.capabilities
        if inputs:
            if self.critic == "conv":
                raise BackendError(
                    "critic='conv' does not take inputs; a conditional model's critic sees x and its inputs "
                    "concatenated: use critic='mlp' (the default) or a module taking that concatenation."
                )
            example = np.asarray(features(np, np.asarray(example), {k: np.asarray(v) for k, v in inputs.items()}))
        if program.engine == "pyro":
            return AdversarialPlan(density=density, critic=self._setup_torch(program, example, seed))
        return AdversarialPlan(density=density, apply=self._setup_jax(program, example, seed))

    def _setup_torch(self, program: Any, example: Any, seed: int) -> Any:
        critic = torch_critic(self.critic, tuple(example.shape[1:]), seed=seed)
        if self.constraint == "spectral_norm":
            critic = torch_spectral_norm(critic)
        x = program.as_array(example)
        critic = critic.to(device=program.device, dtype=x.dtype if x.is_floating_point() else None)
        program.adopt(CRITIC, critic)
        return critic

    def _setup_jax(self, program: Any, example: Any, seed: int) -> Any:
        import jax
        import jax.numpy as jnp

        params, apply = jax_critic(self.critic, jnp.asarray(example), key=jax.random.PRNGKey(seed))
        if self.constraint == "spectral_norm":
            raw = apply

            def apply(p: Any, x: Any) -> Any:
                return raw(spectral_normalise(p), x)

        program.params = {**program.params, CRITIC: jax.device_put(params, program.device)}
        return apply

    # ------------------------------------------------------------------ evaluation
    def log_prob(
        self, program: Any, plan: AdversarialPlan, x: Any, *, inputs: dict | None = None, **kwargs: Any
    ) -> Any:
        """The model's density where it has one (a Flow-GAN); implicit models have none."""
        if not plan.density:
            raise NotSupported(
                "this model is implicit (its observed site is deterministic or has no density), so log_prob "
                "is not defined; compare fits by samples (gm.divergences.MMD, Wasserstein1) instead."
            )
        return super().log_prob(program, plan, x, inputs=inputs, **kwargs)

    def posterior(
        self,
        program: Any,
        plan: AdversarialPlan,
        x: Any,
        num_samples: int,
        *,
        seed: int | None = None,
        inputs: dict | None = None,
    ) -> Any:
        """``z = g^{-1}(x)`` for an invertible generator (a flow); implicit models have no posterior here."""
        if not plan.density:
            raise NotSupported(
                "an adversarially fitted implicit model has no encoder or inverse, so z | x is not available; "
                "use an invertible generator (a flow) or fit with ELBO."
            )
        return super().posterior(program, plan, x, num_samples, seed=seed, inputs=inputs)

    def critic_fn(self, program: Any, plan: AdversarialPlan) -> Any:
        """The fitted critic's raw output ``V_w`` on a batch: a torch module, or ``x -> apply(params, x)``."""
        if plan.critic is not None:
            return plan.critic
        params = program.params[CRITIC]
        return lambda x: plan.apply(params, x)

    def validator(self, program: Any, plan: AdversarialPlan, x: Any, inputs: dict | None = None) -> Any:
        """The critic's lower bound on the divergence between held-out ``x`` and as many generated examples
        (given the same inputs; the same draws at every validation)."""
        import array_api_compat

        maps = self._maps()
        xv, rows = program.as_array(x), program.as_inputs(inputs)
        xp = array_api_compat.array_namespace(xv)

        def value() -> float:
            fake = program.sample(xv.shape[0], seed=0, inputs=rows or None)
            critic = self.critic_fn(program, plan)
            real, fake = (features(xp, a, rows) if rows else a for a in (xv, fake))
            bound, _ = self._critic_objective(critic(real).reshape(-1), critic(fake).reshape(-1), maps)
            return float(bound)

        return value

    # ------------------------------------------------------------------ torch
    def torch_init(self, program: Any, plan: AdversarialPlan, batch: Any, inputs: dict | None, optim: Any) -> Any:
        import array_api_compat

        from gmppl.optim import build_torch

        params = program.params()
        prefix = CRITIC + "$$$"
        gen = [v for k, v in params.items() if not k.startswith(prefix)]
        crit = [v for k, v in params.items() if k.startswith(prefix)]
        return _TorchState(
            program=program,
            critic=plan.critic,
            gen_params=gen,
            critic_params=crit,
            gen_opt=build_torch(optim, gen) if gen else None,
            critic_opt=build_torch(self.critic_optimizer(optim), crit),
            maps=self._maps(array_api_compat.array_namespace(batch)),
            ema=[p.detach().clone() for p in gen] if self.ema is not None and gen else None,
            traceable=not plan.density,
        )

    def torch_step(self, state: Any, batch: Any, inputs: dict | None = None) -> tuple[Any, dict]:
        import torch

        program, critic = state.program, state.critic
        n = batch.shape[0]
        gp = self.constraint in _PENALTIES and self.penalty > 0
        one_sided = self.constraint == "one_sided_penalty"
        out_w = self.output_weight
        n_critic = self.n_critic
        real = features(torch, batch, inputs) if inputs else batch  # T(x, y): each example with its inputs
        for k in range(n_critic):
            if k + 1 < n_critic:
                fake = program.generate(n, inputs=inputs)
            else:  # the last critic step shares the generator's forward pass
                fake_g = self._torch_generate(state, n, inputs)
                if inputs:
                    fake_g = features(torch, fake_g, inputs)
                fake = fake_g.detach()
            if inputs and k + 1 < n_critic:
                fake = features(torch, fake, inputs)
            v = critic(torch.cat([real, fake])).reshape(2 * n)  # one pass over real and fake
            bound, real_term = self._critic_objective(v[:n], v[n:], state.maps)
            closs = -bound
            if out_w:
                out_pen = v.square().mean()
                closs = closs + out_w * out_pen
            if gp:
                penalty = _torch_gradient_penalty(critic, real, fake, one_sided=one_sided)
                closs = closs + self.penalty * penalty
            state.critic_opt.zero_grad(set_to_none=True)
            closs.backward()
            state.critic_opt.step()
        g_obj = self._generator_objective(critic(fake_g).reshape(n), state.maps)
        if state.gen_params:
            grads = torch.autograd.grad(g_obj, state.gen_params, allow_unused=True)
            for p, g in zip(state.gen_params, grads, strict=True):
                p.grad = g
            gnorm = _torch_norm([g for g in grads if g is not None])
            state.gen_opt.step()
            if state.ema is not None:
                state.t += 1
                averaging.torch_update(state.ema, state.gen_params, self.ema_decay(state.t))
        else:
            gnorm = torch.zeros((), device=batch.device)
        loss = (real_term.detach() + g_obj if self.generator_loss == "saddle" or self.is_w1 else g_obj).detach()
        metrics = {
            "loss": loss,
            "critic_loss": closs.detach(),
            "divergence": bound.detach(),
            "grad_norm": gnorm,
        }
        if gp:
            metrics["gradient_penalty"] = penalty.detach()
        if out_w:
            metrics["output_penalty"] = out_pen.detach()
        return state, metrics

    @staticmethod
    def _torch_generate(state: Any, n: int, inputs: dict | None) -> Any:
        """``n`` generated values, differentiable in the generator's parameters: for an implicit generator
        (``x`` a deterministic function of its noise) through the program's traced graph where it reproduces
        the program exactly (``gmppl.engines.pyro.compiled_generate``, traced once per batch size), else
        through Pyro's handlers. Flows (whose transforms may branch on their draws, e.g. spline tails) and
        programs with inputs always run through the handlers."""
        if inputs or not state.gen_params or not state.traceable:
            return state.program.generate(n, grad=bool(state.gen_params), inputs=inputs)
        if n not in state.compiled:
            from gmppl.engines.pyro import compiled_generate

            state.compiled[n] = compiled_generate(state.program, n)
        run = state.compiled[n]
        return run() if run is not None else state.program.generate(n, grad=True)

    def torch_optimizers(self, state: Any) -> list:
        return [o for o in (state.gen_opt, state.critic_opt) if o is not None]

    def torch_counters(self, state: Any) -> dict[str, int]:
        return {"t": int(state.t)}

    def torch_set_counters(self, state: Any, counters: dict[str, int]) -> None:
        state.t = int(counters.get("t", 0))

    def torch_tensors(self, state: Any) -> list:
        return list(state.ema) if state.ema is not None else []

    @contextlib.contextmanager
    def torch_fitted(self, state: Any) -> Iterator[None]:
        """The averaged generator in the program for the duration (validation mid-training), then the iterate."""
        if state.ema is None:
            yield
            return
        with averaging.torch_swapped_in(state.gen_params, state.ema):
            yield

    def torch_finish(self, state: Any) -> None:
        """Write the averaged generator into the program (its parameters are the fit's)."""
        if state.ema is not None:
            averaging.torch_write(state.gen_params, state.ema)

    # ------------------------------------------------------------------ JAX
    def jax_init(
        self, program: Any, plan: AdversarialPlan, batch: Any, inputs: dict | None, key: Any, optim: Any
    ) -> tuple[dict, Any]:
        import jax
        import jax.numpy as jnp
        import optax

        from gmppl.optim import build_optax

        gen_tx = build_optax(optim)
        crit_tx = build_optax(self.critic_optimizer(optim))
        apply = plan.apply
        params = program.params
        gen0 = {k: v for k, v in params.items() if k != CRITIC}
        state = {
            "params": params,
            "opt_state": gen_tx.init(gen0),
            "critic_opt_state": crit_tx.init(params[CRITIC]),
        }
        if self.ema is not None:
            state["ema"], state["ema_t"] = gen0, jnp.zeros((), jnp.int32)
        gp = self.constraint in _PENALTIES and self.penalty > 0
        one_sided = self.constraint == "one_sided_penalty"
        steps, weight, out_w = self.n_critic, float(self.penalty), self.output_weight

        maps = self._maps()

        def critic_loss(c: Any, real: Any, fake: Any, key: Any) -> tuple[Any, dict]:
            n = real.shape[0]
            v = apply(c, jnp.concatenate([real, fake]))  # one pass over real and fake
            bound, real_term = self._critic_objective(v[:n], v[n:], maps)
            aux = {"divergence": bound, "real_term": real_term}
            loss = -bound
            if out_w:
                aux["output_penalty"] = jnp.mean(v**2)
                loss = loss + out_w * aux["output_penalty"]
            if gp:
                pen = _jax_gradient_penalty(lambda x: apply(c, x), real, fake, key, one_sided=one_sided)
                aux["gradient_penalty"] = pen
                loss = loss + weight * pen
            return loss, aux

        def critic_update(c: Any, opt: Any, real: Any, fake: Any, key: Any) -> tuple[Any, Any, Any, dict]:
            (loss, aux), g = jax.value_and_grad(critic_loss, has_aux=True)(c, real, fake, key)
            updates, opt = crit_tx.update(g, opt, c)
            return optax.apply_updates(c, updates), opt, loss, aux

        def step(state: dict, batch: Any, key: Any, inputs: Any = None) -> tuple[dict, dict]:
            params = state["params"]
            gen = {k: v for k, v in params.items() if k != CRITIC}
            c, copt = params[CRITIC], state["critic_opt_state"]
            n = batch.shape[0]
            k_gen, k_extra, k_gp = jax.random.split(key, 3)

            def feat(x: Any) -> Any:  # T(x, y): each example with its inputs
                return features(jnp, x, inputs) if inputs else x

            real = feat(batch)
            if steps > 1:

                def extra(carry: Any, k: Any) -> tuple[Any, None]:
                    c, copt = carry
                    k1, k2 = jax.random.split(k)
                    fake = jax.lax.stop_gradient(program.sample_fn(gen, k1, n, inputs))
                    c, copt, _, _ = critic_update(c, copt, real, feat(fake), k2)
                    return (c, copt), None

                (c, copt), _ = jax.lax.scan(extra, (c, copt), jax.random.split(k_extra, steps - 1))
            fake, pullback = jax.vjp(lambda g: program.sample_fn(g, k_gen, n, inputs), gen)
            c, copt, closs, aux = critic_update(c, copt, real, feat(jax.lax.stop_gradient(fake)), k_gp)
            g_obj, dx = jax.value_and_grad(lambda x: self._generator_objective(apply(c, feat(x)), maps))(fake)
            (grads,) = pullback(dx)
            gen_tx_state = state["opt_state"]
            updates, gen_tx_state = gen_tx.update(grads, gen_tx_state, gen)
            gen = optax.apply_updates(gen, updates)
            real_term = aux.pop("real_term")
            loss = real_term + g_obj if self.generator_loss == "saddle" or self.is_w1 else g_obj
            metrics = {"loss": loss, "critic_loss": closs, "grad_norm": optax.tree.norm(grads), **aux}
            new = {"params": {**gen, CRITIC: c}, "opt_state": gen_tx_state, "critic_opt_state": copt}
            if "ema" in state:
                t = state["ema_t"] + 1
                d = self.ema_decay(t.astype(jnp.float32))
                new["ema_t"] = t
                new["ema"] = averaging.jax_update(state["ema"], gen, d)
            return new, jax.tree.map(jnp.asarray, metrics)

        return state, step

    def jax_params(self, state: dict) -> Any:
        """The averaged generator with the last critic (``ema``), or the last iterate."""
        if "ema" not in state:
            return state["params"]
        return {**state["ema"], CRITIC: state["params"][CRITIC]}


@dataclass
class _TorchState:
    """Torch-side state of an adversarial fit: the program, its critic, two parameter lists, two optimisers."""

    program: Any
    critic: Any
    gen_params: list
    critic_params: list
    gen_opt: Any
    critic_opt: Any
    maps: tuple
    ema: list | None = None  # the generator's running average (``Adversarial.ema``)
    t: int = 0
    traceable: bool = False  # an implicit generator: its forward pass may run as a traced graph
    compiled: dict = field(default_factory=dict)  # batch size -> the traced generator, or None (see _torch_generate)


def features(xp: Any, x: Any, inputs: dict) -> Any:
    """The critic's input for a conditional model: each example's flattened ``x`` and its input rows, side by
    side (inputs in name order, cast to ``x``'s dtype)."""
    n = x.shape[0]
    parts = [x.reshape(n, -1), *(inputs[k].reshape(n, -1) for k in sorted(inputs))]
    return xp.concatenate([p.astype(x.dtype) if hasattr(p, "astype") else p.to(x.dtype) for p in parts], -1)


def _softsign_half(v: Any) -> Any:
    """``v / (2 (1 + |v|))``: onto ``(-1/2, 1/2)``, the TV critic's range, like ``tanh(v) / 2``, but it
    saturates polynomially (slope ``1 / (2 (1 + |v|)^2)``), not exponentially, so neither player's
    gradient dies as the critic sharpens towards the step ``sign(p - q) / 2``."""
    return v / (2.0 * (1.0 + abs(v)))


#: `_log_guarded_exp`'s range: ``exp(v)`` itself on ``|v| <= 20`` (``e^20 ~ 5e8``).
_GUARD = 20.0


def _log_guarded_exp(xp: Any, v: Any) -> Any:
    """``log E(v)`` for the guarded exponential ``E(v)``: ``exp(v)`` on ``|v| <= c`` (``c = _GUARD``), continued
    linearly, ``E = e^c (1 + v - c)``, above ``c`` and ``1 / E = e^c (1 - c - v)`` below ``-c``. A C^1
    increasing bijection of the reals onto ``(0, inf)`` whose value and reciprocal grow linearly, not
    exponentially, in the critic's output: ``log E = clip(v, -c, c) + log1p(relu(v - c)) - log1p(relu(-v - c))``
    (no branch is evaluated where it overflows)."""
    c = _GUARD
    hi, lo = v - c, -v - c
    hi, lo = (hi + abs(hi)) / 2, (lo + abs(lo)) / 2
    return (v - hi + lo) + xp.log1p(hi) - xp.log1p(lo)


def _guarded_maps(d: Any, xp: Any) -> tuple[Any, Any]:
    """``(activation, f* o activation)`` for the f-divergences whose f-GAN maps hold ``exp(+-v)``: KL,
    reverse KL, Neyman, squared Hellinger, and Jeffreys in its log-ratio form, each with `_log_guarded_exp`'s
    ``E`` in place of ``exp`` (``L = log E``):

    ==================  =========================  ==============================  =========================
    divergence          activation T(v)            f*(T(v))                        f-GAN's (Nowozin et al.)
    ==================  =========================  ==============================  =========================
    KL                  1 + L(v - 1)               E(v - 1)                        T = v
    reverse KL          -1 / E(v)                  L(v) - 1                        T = -exp(-v)
    Neyman              1 - 1 / E(v)               2 - 2 / sqrt(E(v))              T = 1 - exp(-v)
    squared Hellinger   1 - 1 / E(v)               E(v) - 1                        T = 1 - exp(-v)
    Jeffreys            L + 1 - 1 / E,  L = L(v)   E + L - 1                       T = v (Lambert W f*)
    ==================  =========================  ==============================  =========================

    On ``|v| <= 20`` these are f-GAN's maps (Jeffreys': ``T = f'(e^v)``, ``v`` the critic's log density
    ratio, the form the others have already; f-GAN's identity makes a critic reach ``T* = 1 + log u - 1/u``,
    ``-q/p`` where the data are scarce, linearly). Beyond it f-GAN's overflow: a critic chasing an
    unbounded ``T*`` (``-q/p`` for reverse KL where the generator puts mass the data lack, ``1 + log(p/q)``
    for KL where the data have mass the generator lacks) drives ``exp(+-v)`` in one term and its gradient
    past float32 (NaN); here both grow linearly. Each ``T`` still ranges over all of ``f*``'s domain, so the bound's supremum
    is unchanged."""
    import array_api_compat

    name = d.name

    def ns(v: Any) -> Any:
        return xp if xp is not None else array_api_compat.array_namespace(v)

    def act(v: Any) -> Any:
        x = ns(v)
        if name == "kl":
            return 1.0 + _log_guarded_exp(x, v - 1.0)
        lg = _log_guarded_exp(x, v)
        if name == "reverse_kl":
            return -x.exp(-lg)
        if name == "jeffreys":
            return lg - x.expm1(-lg)
        return -x.expm1(-lg)  # neyman, squared_hellinger

    def conj(v: Any) -> Any:
        x = ns(v)
        if name == "kl":
            return x.exp(_log_guarded_exp(x, v - 1.0))
        lg = _log_guarded_exp(x, v)
        if name == "reverse_kl":
            return lg - 1.0
        if name == "neyman":
            return -2.0 * x.expm1(-0.5 * lg)
        if name == "jeffreys":
            return x.expm1(lg) + lg
        return x.expm1(lg)  # squared_hellinger

    return act, conj


def _torch_norm(grads: list) -> Any:
    import torch

    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).detach()


def _torch_gradient_penalty(critic: Any, real: Any, fake: Any, *, one_sided: bool = False) -> Any:
    """``E[(|grad_x T(x_hat)| - 1)^2]``, ``x_hat = e x + (1 - e) y``, ``e ~ U(0, 1)`` per example;
    ``one_sided``: ``E[max(0, |grad_x T(x_hat)| - 1)^2]`` (the arithmetic is ``gmppl.divergences.lipschitz``'s)."""
    import array_api_compat.torch as xp
    import torch

    from gmppl.divergences.lipschitz import interpolate, penalty_from_grad

    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    x_hat = interpolate(real, fake, eps).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return penalty_from_grad(xp, g, one_sided=one_sided)


def _jax_gradient_penalty(critic: Any, real: Any, fake: Any, key: Any, *, one_sided: bool = False) -> Any:
    """The WGAN-GP penalty (see `_torch_gradient_penalty`); per-example gradients of a per-example critic."""
    import jax
    import jax.numpy as jnp

    from gmppl.divergences.lipschitz import interpolate, penalty_from_grad

    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), dtype=real.dtype)
    g = jax.grad(lambda x: critic(x).sum())(interpolate(real, fake, eps))
    return penalty_from_grad(jnp, g, one_sided=one_sided)
