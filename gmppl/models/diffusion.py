"""``Diffusion(score_net, sde=...)``: the law of a score-based diffusion model, as a Pyro or NumPyro distribution.

A forward SDE ``dx = f(t) x dt + g(t) dW`` (``gmppl.models.sde``) turns data into ``N(0, s^2 I)`` at
``t = 1``; a network ``s_theta(x, t) ~ grad_x log p_t(x)`` lets one run it backwards (Song et al. 2021):

* reverse-time SDE ``dx = [f x - g^2 s_theta] dt + g dW_bar`` (``sampler="em"``: Euler–Maruyama;
  ``"pc"``: predictor–corrector with Langevin corrector steps at signal-to-noise ``snr``);
* probability-flow ODE ``dx/dt = f x - g^2 s_theta / 2`` (``sampler="ode"``: adaptive Dopri5, with
  torchdiffeq on torch and diffrax on JAX) — a deterministic pushforward of ``z ~ N(0, s^2 I)``.

``log_prob`` is the exact likelihood of the probability-flow ODE by the instantaneous change of
variables, ``log p_0(x_0) = log p_1(x_1) + int_eps^1 div_x f~(x_t, t) dt``, with the divergence exact
(``trace="exact"``, one Jacobian-vector product per dimension) or by Hutchinson's estimator
``div = E[v^T J v]``, ``v`` Rademacher (``trace="hutchinson"``; ``log_prob_estimate`` returns the
mean over ``probes`` independent probes and its standard error). ``trace="auto"`` is exact up to
``exact_trace_max_dim`` dimensions.

The network is called on batches, ``score_net(x, t)`` with ``x`` of shape ``(batch, *event_shape)``
and ``t`` of shape ``(batch,)`` in ``[0, 1]``; it is the only parameterised part, so register it with
``pyro.module``/``eqx_module`` in the program.

**Conditional models.** ``Diffusion(score_net, context=c)`` with ``c`` a batch of ``R`` rows (one per
example, computed in the program from its inputs) is the conditional law ``p(x | c_i)`` of each row, batch
shape ``(R,)``: the network is called as ``score_net(x, t, c)`` in training, in every sampler and in the
ODE likelihood, and generating ``R`` examples gives one per row (``k R`` examples: row ``i mod R`` for draw
``i``). ``Score`` fits it by DSM on data given as ``{"x": x, "y": y}``; the score minimising the DSM loss
is then ``grad_x log p_t(x | c)`` for every ``c`` in the data.

**Classifier-free guidance** (Ho & Salimans 2022). Train with ``Score(guidance_dropout=p)``: each
example's context is replaced by the *null context* with probability ``p``, so the same network learns
the unconditional score ``s(x, t, null) ~ grad log p_t(x)`` as well. The null context is zeros shaped
like a context row unless ``null_context=`` gives one (a row or a full batch; pass a
``pyro.param``/``numpyro.param`` to learn a null token): zeros is engine-free and needs no extra
parameter, and is distinct from every real context when contexts are one-hot labels; for real-valued
contexts where zero is a legitimate value, give a null token instead. ``guidance=w`` then samples with
``(1 + w) s(x, t, c) - w s(x, t, null)``, the score of ``p_t(x | c)^(1+w) / p_t(x)^w``, up to
normalisation. This does *not* sample the fitted ``p(x | c)``: it sharpens it towards regions where
``c`` is more probable (larger ``w``: less diverse, more typical samples), and the product of the noised
marginals is not itself the noised marginal of a fixed law, so it is a heuristic with no exact target.
``log_prob`` stays the unguided model's ``p(x | c)``; ``w = 0`` (the default) is the unguided sampler.

The engine's class comes from ``diffusion_torch`` or ``diffusion_jax``, imported when a ``Diffusion``
of that engine is built, so ``import gmppl`` loads neither torch nor JAX; what both share
(``DiffusionOptions``, the event-shape probe) is in ``diffusion_options``.

Example::

    s = gm.models.ScoreMLP(2)
    def model(x=None, n=None):
        net = pyro.module("score", s)
        with pyro.plate("data", x.shape[0] if x is not None else n):
            pyro.sample("x", gm.models.Diffusion(net, sde="vp"), obs=x)

    c = gm.models.ScoreMLP(2, context_dim=3)           # net(x, t, c)
    def conditional(x=None, y=None):                    # y: integer labels, one per row
        net = pyro.module("score", c)
        with pyro.plate("data", y.shape[0]):
            onehot = torch.nn.functional.one_hot(y, 3).float()
            pyro.sample("x", gm.models.Diffusion(net, sde="vp", context=onehot), obs=x)
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from gmppl.errors import ModelError
from gmppl.models.diffusion_options import DiffusionOptions
from gmppl.models.sde import SDE, as_sde


def _is_torch_module(net: Any) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(net, torch.nn.Module)


def Diffusion(  # noqa: N802 - a distribution constructor
    score_net: Any,
    sde: str | SDE = "vp",
    *,
    event_shape: tuple[int, ...] | None = None,
    sampler: str = "em",
    steps: int = 500,
    snr: float = 0.16,
    corrector_steps: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: str = "auto",
    probes: int = 1,
    exact_trace_max_dim: int = 16,
    context: Any = None,
    null_context: Any = None,
    guidance: float = 0.0,
    **sde_kwargs: Any,
) -> Any:
    """A diffusion model with score network ``score_net``: a Pyro ``TorchDistribution`` for a torch
    ``nn.Module``, a NumPyro ``Distribution`` for an equinox module, a flax apply function or any JAX callable.

    ``event_shape`` is read from ``score_net.event_shape`` when the network has one (the default
    networks do), else found by calling the network on vectors of growing size; pass it for images.
    ``sde_kwargs`` set the SDE's ``beta_min``/``beta_max`` (VP, sub-VP) or ``sigma_min``/``sigma_max`` (VE).
    ``context`` (an array of ``R`` rows) makes it conditional, ``score_net(x, t, c)``, batch shape ``(R,)``;
    ``guidance=w`` samples with the classifier-free-guided score against ``null_context`` (default zeros);
    see the module docstring.
    """
    options = DiffusionOptions(
        sampler=sampler,
        steps=int(steps),
        snr=float(snr),
        corrector_steps=int(corrector_steps),
        rtol=float(rtol),
        atol=float(atol),
        trace=trace,
        probes=int(probes),
        exact_trace_max_dim=int(exact_trace_max_dim),
        guidance=float(guidance),
    )
    sde = as_sde(sde, **sde_kwargs)
    if context is None:
        if guidance != 0 or null_context is not None:
            raise ModelError(
                f"Diffusion(guidance={guidance!r}, null_context=...) guides a conditional model; pass context=."
            )
        batch: tuple[int, ...] = ()
    else:
        if len(getattr(context, "shape", ())) < 1:
            raise ModelError(
                "Diffusion(context=...) takes an array with one row per example (shape (rows, ...)), got "
                f"{type(context).__name__} of shape {getattr(context, 'shape', None)}."
            )
        batch = (int(context.shape[0]),)
    if _is_torch_module(score_net):
        from gmppl.models.diffusion_torch import TorchDiffusion, torch_event_shape

        shape = tuple(event_shape) if event_shape is not None else torch_event_shape(score_net, context)
        return TorchDiffusion(score_net, sde, shape, batch, options, context=context, null_context=null_context)
    if not callable(score_net):
        raise ModelError(
            f"score_net={score_net!r} is not callable; pass a torch nn.Module, an equinox/flax module or a "
            "JAX function called as score_net(x, t)."
        )
    from gmppl.models.diffusion_jax import JaxDiffusion, jax_event_shape

    shape = tuple(event_shape) if event_shape is not None else jax_event_shape(score_net, context)
    return JaxDiffusion(score_net, sde, shape, batch, options, context=context, null_context=null_context)


def with_options(d: Any, **changes: Any) -> Any:
    """A copy of a ``Diffusion`` distribution with some ``DiffusionOptions`` changed (e.g. the sampler)."""
    return type(d)(
        d.score_net,
        d.sde,
        tuple(d.event_shape),
        tuple(d.batch_shape),
        replace(d.options, **changes),
        context=d.context,
        null_context=d.null_context,
    )


def find_diffusion(fn: Any) -> Any:
    """The ``Diffusion`` inside a site's distribution (through ``Independent``/``Masked``/expand wrappers)."""
    d = fn
    while d is not None and not getattr(type(d), "gmppl_score_model", False):
        d = getattr(d, "base_dist", None)
    return d
