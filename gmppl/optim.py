"""Optimiser specifications that build the same optimiser on either engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gmppl.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba, 2015) with optional global-norm gradient clipping.

    ``Adam(lr).torch(params)`` builds ``torch.optim.Adam``; ``Adam(lr).optax()`` builds ``optax.adam``.
    With ``clip_norm=c`` the gradient ``g`` is rescaled to ``g * min(1, c / ||g||_2)`` (global norm over
    all parameters) before each step, on both engines.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        import math
        from numbers import Real

        for name in ("lr", "eps") + (("clip_norm",) if self.clip_norm is not None else ()):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, Real)
                or not math.isfinite(v)
                or v < 0
                or (v == 0 and name != "lr")
            ):
                low = (
                    "a finite number >= 0 (0 holds the parameters still)"
                    if name == "lr"
                    else "a positive finite number"
                )
                raise BackendError(f"Adam {name}={v!r} must be {low}, e.g. {name}={getattr(Adam, name, 1e-3) or 1.0}.")
        if len(self.betas) != 2 or not all(isinstance(b, Real) and 0 <= b < 1 for b in self.betas):
            raise BackendError(f"Adam betas={self.betas!r} must be two numbers in [0, 1), e.g. (0.9, 0.999).")

    def torch(self, params: Any, *, fused: bool | None = None) -> Any:
        """``torch.optim.Adam`` over ``params`` (``fused=True``: one kernel per parameter), clipping in
        a step pre-hook when ``clip_norm`` is set."""
        import torch

        params = list(params)
        opt = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps, fused=fused)
        if self.clip_norm is not None:
            clip = float(self.clip_norm)

            def clip_gradients(*_: Any) -> None:
                torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)

            opt.register_step_pre_hook(clip_gradients)
        return opt

    def optax(self) -> Any:
        import optax

        opt = optax.adam(self.lr, b1=self.betas[0], b2=self.betas[1], eps=self.eps)
        if self.clip_norm is not None:
            opt = optax.chain(optax.clip_by_global_norm(self.clip_norm), opt)
        return opt


def as_optim(optim: Any, default: Adam | None = None) -> Any:
    """Normalise the ``optim=`` argument: None (default Adam), a float (Adam's lr), or an optimiser spec.

    An ``optax.GradientTransformation`` or a callable ``params -> torch.optim.Optimizer`` is kept as is.
    """
    if optim is None:
        return default or Adam()
    if isinstance(optim, int | float):
        return Adam(lr=float(optim))
    return optim


def build_torch(optim: Any, params: Any) -> Any:
    """A torch optimiser over ``params`` from a spec or a factory.

    ``gm.optim.Adam`` runs as torch's fused Adam (one kernel per parameter instead of about six, which
    matters for small networks on CPU; the same update up to rounding), falling back to the default
    implementation where fused Adam does not cover the parameters' dtype or device.
    """
    if type(optim) is Adam:
        params = list(params)
        if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
            try:
                return optim.torch(params, fused=True)
            except (RuntimeError, ValueError) as e:  # a dtype/device fused Adam does not cover
                log.info("torch's fused Adam is unavailable here (%s); using the default Adam", e)
        return optim.torch(params)
    if hasattr(optim, "torch"):
        return optim.torch(params)
    if hasattr(optim, "pt_optim_constructor"):  # a pyro.optim optimiser: its torch class and arguments
        args = optim.pt_optim_args
        if callable(args):  # Pyro's per-parameter form: one set of arguments for all here
            args = args("", "")
        return optim.pt_optim_constructor(list(params), **dict(args))
    if hasattr(optim, "init_fn") and hasattr(optim, "update_fn"):
        raise BackendError(
            f"optim={optim!r} is a NumPyro optimiser; a Pyro program takes gm.optim.Adam(...) or pyro.optim."
        )
    if callable(optim):
        return optim(params)
    raise BackendError(
        f"optim={optim!r} is not an optimiser for torch; use gm.optim.Adam(lr=...), a pyro.optim optimiser or a "
        "factory params -> torch.optim.Optimizer."
    )


def build_optax(optim: Any) -> Any:
    """An optax ``GradientTransformation`` from a spec, or the transformation itself."""
    if hasattr(optim, "optax"):
        return optim.optax()
    if hasattr(optim, "init_fn") and hasattr(optim, "update_fn") and hasattr(optim, "get_params_fn"):
        return _from_numpyro(optim)
    if hasattr(optim, "init") and hasattr(optim, "update"):
        return optim
    if hasattr(optim, "pt_optim_constructor"):
        raise BackendError(
            f"optim={optim!r} is a pyro.optim optimiser; a NumPyro program takes gm.optim.Adam(...), an "
            "optax transformation or a numpyro.optim optimiser."
        )
    raise BackendError(
        f"optim={optim!r} is not an optimiser for JAX; use gm.optim.Adam(lr=...), an optax transformation or a "
        "numpyro.optim optimiser."
    )


def _from_numpyro(optim: Any) -> Any:
    """A ``numpyro.optim`` optimiser as an optax transformation: the update is its new parameters minus the old."""
    import jax
    import optax

    def init(params: Any) -> Any:
        return optim.init(params)

    def update(grads: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        state = optim.update(grads, state)
        new = optim.get_params(state)
        return jax.tree.map(lambda a, b: a - b, new, params), state

    return optax.GradientTransformation(init, update)
