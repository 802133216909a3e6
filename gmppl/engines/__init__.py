"""What differs between Pyro/torch and NumPyro/JAX: tracing, parameters, devices, step loops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gmppl.errors import ModelError, UnknownName

ENGINES = ("pyro", "numpyro")
CALL_ARGS = ("x", "n")  # gmppl calls a program as model(x=data, n=None) and model(x=None, n=k), by keyword


def check_signature(model: Callable, observed: str = "x") -> None:
    """Refuse a program whose signature cannot take ``model(x=..., n=...)``, before it is run.

    Names the parameter at fault and the signature gmppl expects. Callables whose signature cannot be
    read (some builtins and extension types) are let through: running them says the rest. ``**kwargs``
    takes any keyword, and ``functools.partial`` shows its remaining parameters. ``observed`` is the
    observed site's name; it only shapes the advice (the data arrive as ``x`` whatever the site is
    called).
    """
    import inspect

    try:
        sig = inspect.signature(model)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**dict.fromkeys(CALL_ARGS))
    except TypeError as e:
        why = str(e)
    else:
        return
    params = sig.parameters
    kinds = inspect.Parameter
    takes_any = any(p.kind is kinds.VAR_KEYWORD for p in params.values())
    problems = []
    absent = [a for a in CALL_ARGS if a not in params and not takes_any]
    if absent:
        problems.append(f"it has no parameter {' or '.join(map(repr, absent))}")
    positional = [a for a in CALL_ARGS if a in params and params[a].kind is kinds.POSITIONAL_ONLY]
    if positional:
        verb = "is" if len(positional) == 1 else "are"
        problems.append(f"{' and '.join(map(repr, positional))} {verb} positional-only (gmppl passes it by keyword)")
    required = [
        name
        for name, p in params.items()
        if name not in CALL_ARGS
        and p.default is kinds.empty
        and p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    ]
    if required:
        problems.append(
            f"it requires {', '.join(map(repr, required))}, which gmppl does not pass (give it a default or remove it)"
        )
    detail = "; ".join(problems) or why
    hint = ""
    if observed != "x":
        hint = (
            f" observed={observed!r} names the program's sample site; the data still arrive as the argument x "
            f"(sample({observed!r}, ..., obs=x))."
        )
    name = getattr(model, "__name__", None) or getattr(getattr(model, "func", None), "__name__", None) or "model"
    raise ModelError(
        f"the program {name}{sig} cannot be called the way gmppl calls it, model(x=data, n=None) to condition "
        f"and model(x=None, n=k) to generate: {detail}. gmppl expects the signature model(x=None, n=None) "
        f"(x: the data or None; n: how many examples to generate when x is None).{hint}"
    )


def detect_engine(model: Callable, example: np.ndarray, *, observed: str = "x") -> str:
    """Run the program once under both PPLs' trace handlers; the one that records sites owns it.

    The program's signature is checked first (:func:`check_signature`), so a program that cannot take
    ``model(x=..., n=...)`` is told so rather than that its engine is unknown. Pyro's side runs in a
    throw-away parameter store, so detection leaves no trace behind.
    """
    check_signature(model, observed=observed)
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
