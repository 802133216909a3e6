"""What differs between Pyro/torch and NumPyro/JAX: tracing, parameters, devices, step loops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gmppl.errors import ModelError, UnknownName

ENGINES = ("pyro", "numpyro")


def detect_engine(model: Callable, example: np.ndarray) -> str:
    """Run the program once under both PPLs' trace handlers; the one that records sites owns it.

    Pyro's side runs in a throw-away parameter store, so detection leaves no trace behind.
    """
    import pyro
    import pyro.poutine as poutine
    import torch
    from numpyro import handlers

    errors = []
    for as_torch in (False, True):
        x = torch.as_tensor(example) if as_torch else example
        traced = poutine.trace(model)
        try:
            with pyro.get_param_store().scope():
                ntr = handlers.trace(handlers.seed(traced, 0)).get_trace(x=x, n=None)
        except Exception as e:  # the program may need the other engine's arrays
            errors.append(f"{type(e).__name__}: {e}")
            continue
        if ntr:
            return "numpyro"
        if any(site["type"] in ("sample", "param") for site in traced.msngr.trace.nodes.values()):
            return "pyro"
    detail = f" Running it raised: {errors[-1]}" if errors else ""
    raise ModelError(
        "could not tell the engine: the program made no Pyro or NumPyro sample/param calls when run as "
        f"model(x=data).{detail} Pass engine='pyro' or engine='numpyro' if detection is wrong."
    )


def make_program(engine: str, model: Callable, *, observed: str, latent: str, device: Any) -> Any:
    if engine == "pyro":
        from gmppl.engines.pyro import PyroProgram

        return PyroProgram(model, observed=observed, latent=latent, device=device)
    if engine == "numpyro":
        from gmppl.engines.numpyro import NumPyroProgram

        return NumPyroProgram(model, observed=observed, latent=latent, device=device)
    raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES}.")


def make_loop(engine: str, programs: list, backend: Any, plans: list, data: Any, *, batch_size: int, steps: int) -> Any:
    """The engine's training loop (``gmppl.engines.base.Loop``) over ``programs``, one per chain."""
    if engine == "pyro":
        from gmppl.engines.pyro import TorchLoop

        return TorchLoop(programs, backend, plans, data, batch_size=batch_size, steps=steps)
    from gmppl.engines.numpyro import JaxLoop

    return JaxLoop(programs, backend, plans, data, batch_size=batch_size, steps=steps)
