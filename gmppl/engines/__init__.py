"""What differs between Pyro/torch and NumPyro/JAX: tracing, parameters, devices, step loops."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from gmppl.engines.calls import Call, make_call
from gmppl.errors import DeviceError, ModelError, UnknownName

ENGINES = ("pyro", "numpyro")


def check_signature(model: Callable, observed: str = "x", inputs: tuple[str, ...] = ()) -> Call:
    """How to call ``model`` with its data and ``inputs``, or a `ModelError` naming what does not fit (before
    the program runs); see `gmppl.engines.calls`."""
    return make_call(model, observed, tuple(inputs))


def detect_engine(
    model: Callable, example: np.ndarray, *, observed: str = "x", inputs: dict[str, np.ndarray] | None = None
) -> str:
    """Run the program once under both PPLs' trace handlers; the one that records sites owns it.

    The program's signature is checked first (:func:`check_signature`), so a program that cannot take
    ``model(x=..., n=...)`` is told so rather than that its engine is unknown. Pyro's side runs in a
    throw-away parameter store, so detection leaves no trace behind.

    A PPL not imported yet cannot be called by the program, so detection skips its side (importing torch
    and Pyro, or JAX and NumPyro, takes seconds): while Pyro is not imported the program is first run under
    NumPyro alone, and while NumPyro is not imported, under Pyro alone. If the program imports the skipped
    PPL as it runs, detection runs again under both, so a program that mixes the two is still refused.
    """
    inputs = inputs or {}
    call = check_signature(model, observed, tuple(inputs))
    fn = call.bind(model)
    if "pyro" not in sys.modules and _numpyro_only(fn, example, inputs) and "pyro" not in sys.modules:
        return "numpyro"
    with_numpyro = "numpyro" in sys.modules
    engine, errors = _run_traced(fn, example, inputs, with_numpyro)
    if not with_numpyro and "numpyro" in sys.modules:  # the program imported NumPyro itself: look again
        engine, errors = _run_traced(fn, example, inputs, True)
    if engine is not None:
        return engine
    detail = f" Running it raised: {errors[-1]}" if errors else ""
    raise ModelError(
        "could not tell the engine: the program made no Pyro or NumPyro sample/param calls when run "
        f"with its data.{detail}{call.hint()} Pass engine='pyro' or engine='numpyro' if detection is wrong."
    )


def _run_traced(
    fn: Callable, example: np.ndarray, inputs: dict[str, np.ndarray], with_numpyro: bool
) -> tuple[str | None, list[str]]:
    """Run ``fn`` under Pyro's trace handler (inside NumPyro's too when ``with_numpyro``), on the data as
    numpy arrays and then as torch tensors: the engine whose sites it records (None) and the errors raised."""
    import pyro
    import pyro.poutine as poutine
    import torch

    errors = []
    for as_torch in (False, True):
        x = torch.as_tensor(example) if as_torch else example
        rows = {k: torch.as_tensor(v) if as_torch else v for k, v in inputs.items()}
        traced = poutine.trace(fn)
        try:
            with pyro.get_param_store().scope():
                if with_numpyro:
                    from numpyro import handlers

                    ntr = handlers.trace(handlers.seed(traced, 0)).get_trace(x=x, n=None, **rows)
                else:
                    traced(x=x, n=None, **rows)
                    ntr = {}
        except Exception as e:  # the program may need the other engine's arrays
            errors.append(f"{type(e).__name__}: {e}")
            continue
        pyro_sites = [k for k, site in traced.msngr.trace.nodes.items() if site["type"] in ("sample", "param")]
        if ntr and pyro_sites:
            raise ModelError(
                f"the program mixes Pyro and NumPyro: it makes NumPyro calls ({', '.join(list(ntr)[:5])}) and Pyro "
                f"calls ({', '.join(pyro_sites[:5])}). gmppl trains one engine's parameters, so the other's would "
                "silently stay untrained; write every pyro.*/numpyro.* call (sample, param, module, plate) in one PPL."
            )
        if ntr:
            return "numpyro", errors
        if pyro_sites:
            return "pyro", errors
    return None, errors


def _numpyro_only(fn: Callable, example: np.ndarray, inputs: dict[str, np.ndarray]) -> bool:
    """Whether ``fn`` run once under NumPyro's trace handler alone records sample/param sites."""
    if "numpyro" not in sys.modules:
        return False  # a NumPyro program has imported NumPyro by now: spare importing JAX for a Pyro one
    from numpyro import handlers

    from gmppl.engines.jax_cache import enable_jax_cache

    enable_jax_cache()
    try:
        import jax

        x, rows = jax.device_put((example, inputs))  # JAX arrays as the fit will pass (no per-shape staging compile)
        return bool(handlers.trace(handlers.seed(fn, 0)).get_trace(x=x, n=None, **rows))
    except Exception:  # e.g. the program needs torch tensors: the full detection below says what failed
        return False


def make_program(
    engine: str, model: Callable, *, observed: str, latent: str, device: Any, call: Call | None = None
) -> Any:
    """The program of ``engine`` for ``model``, called as ``call`` says (default: ``model(x=..., n=...)``)."""
    if engine == "pyro":
        from gmppl.engines.pyro import PyroProgram

        return PyroProgram(model, observed=observed, latent=latent, device=device, call=call)
    if engine == "numpyro":
        from gmppl.engines.numpyro import NumPyroProgram

        return NumPyroProgram(model, observed=observed, latent=latent, device=device, call=call)
    raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES}.")


def make_loop(
    engine: str,
    programs: list,
    backend: Any,
    plans: list,
    data: Any,
    *,
    batch_size: int,
    steps: int,
    inputs: dict | None = None,
    devices: list | None = None,
) -> Any:
    """The engine's training loop (``gmppl.engines.base.Loop``) over ``programs``, one per chain; the inputs'
    rows are minibatched with the data's; JAX ``devices`` share each batch (one chain) or the chains."""
    if engine == "pyro":
        from gmppl.engines.pyro import TorchLoop

        return TorchLoop(programs, backend, plans, data, batch_size=batch_size, steps=steps, inputs=inputs)
    from gmppl.engines.numpyro import JaxLoop

    return JaxLoop(programs, backend, plans, data, batch_size=batch_size, steps=steps, inputs=inputs, devices=devices)


def resolve_devices(devices: Any, engine: str, batch_size: int, chains: int = 1) -> list | None:
    """``devices=N`` or a list of JAX devices: the devices a NumPyro fit spreads over (None: one).

    One chain: each batch is split over the devices (``batch_size`` must divide). ``chains=C > 1``: the
    chains are spread over the devices, ``C / N`` whole chains each (``C`` must be a multiple of ``N``)."""
    if devices is None:
        return None
    if engine != "numpyro":
        raise DeviceError(
            "devices= shards a NumPyro program's batches over JAX devices; a Pyro fit goes data-parallel when its "
            "script is launched by torchrun (torchrun --nproc-per-node=N script.py), with no devices= argument."
        )
    import jax

    available = jax.devices()
    if isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise DeviceError(
                f"devices={devices}: JAX sees {len(available)} device(s) here ({available[0].platform}); on CPU, "
                "XLA_FLAGS=--xla_force_host_platform_device_count=N (set before JAX starts) makes N."
            )
        chosen = list(available[: int(devices)])
    elif isinstance(devices, list | tuple) and devices and all(isinstance(d, jax.Device) for d in devices):
        if len(set(devices)) != len(devices):
            raise DeviceError(f"devices={list(devices)!r} names a device twice; pass each device once.")
        chosen = list(devices)
    else:
        raise DeviceError(f"devices={devices!r}: pass a number of devices or a list of jax devices.")
    n = len(chosen)
    if chains > 1:
        if chains % n:
            fits = [d for d in range(1, min(chains, len(available)) + 1) if chains % d == 0]
            raise DeviceError(
                f"chains={chains} do not spread over {n} devices: with chains > 1, devices= gives each device "
                f"whole chains, so chains must be a multiple of the devices. Pass chains={n * (chains // n + 1)} "
                f"(any multiple of {n}), or devices= one of {fits}."
            )
    elif batch_size % n:
        raise DeviceError(
            f"batch_size={batch_size} does not split over {n} devices; pass a multiple of {n} "
            "(batch_size is the global batch)."
        )
    return chosen
