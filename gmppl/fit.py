"""``gm.fit``: the one entry point. Checks everything, then runs the engine's training loop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gmppl._data import check_data
from gmppl.engines import ENGINES, detect_engine, make_program, trainer_for
from gmppl.errors import BackendError, ModelError, UnknownName
from gmppl.inference.base import Backend
from gmppl.optim import as_optim
from gmppl.progress import Progress
from gmppl.result import Fit

log = logging.getLogger("gmppl")


def fit(
    model: Callable,
    data: Any,
    backend: Backend | None = None,
    *,
    steps: int = 1000,
    batch_size: int = 128,
    optim: Any = None,
    seed: int = 0,
    device: Any = None,
    observed: str = "x",
    latent: str = "z",
    engine: str | None = None,
    chains: int = 1,
    callbacks: Sequence[Callable[[int, dict], None]] = (),
    progress: bool = True,
) -> Fit:
    """Fit a Pyro or NumPyro program ``model(x=None, n=None)`` to ``data`` with an inference ``backend``.

    ``theta* = argmin_theta D(P_X || P_theta)`` where ``D`` is the backend's divergence (forward
    KL for ``Likelihood``/``ELBO``, an f-divergence or W1 for ``Adversarial``, Fisher for ``Score``).
    Everything is checked before step 1: the data, the program's sites, the backend's needs.

    Example::

        fit = gm.fit(model, x_train, gm.inference.Likelihood(), steps=2000, batch_size=256)
        fit.log_prob(x_test).mean()
    """
    from gmppl.inference import Likelihood

    x = check_data(data)
    backend = Likelihood() if backend is None else backend
    if not isinstance(backend, Backend):
        raise BackendError(
            f"backend={backend!r} is not a gmppl backend; use one from gm.inference, e.g. "
            "gm.inference.Likelihood(), ELBO(), Adversarial(divergence='js'), Score()."
        )
    for name, value in (("steps", steps), ("batch_size", batch_size), ("chains", chains)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise BackendError(f"{name}={value!r} must be a positive integer.")
    if engine is not None and engine not in ENGINES:
        raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES} (or None to detect).")
    if not callable(model):
        raise ModelError(f"model={model!r} is not callable; pass a Pyro or NumPyro program model(x=None, n=None).")

    example = x[: min(len(x), 8)]
    engine = engine or detect_engine(model, example)
    batch_size = min(int(batch_size), len(x))
    optim = as_optim(optim, getattr(backend, "default_optim", None))

    programs, infos = [], []
    for c in range(chains):
        program = make_program(engine, model, observed=observed, latent=latent, device=device)
        info = program.inspect(example)
        backend.check(info)
        backend.setup(program, info, example, seed=seed + c)
        if c > 0 and getattr(backend, "run", None) is None:  # a sampler's chains share the target
            from gmppl.ensemble import reinitialise

            reinitialise(program, seed=seed + c)
        if chains > 1 and hasattr(program, "freeze"):  # modules shared by chains: each keeps its own values
            program.freeze()
        programs.append(program)
        infos.append(info)

    histories, seconds = [], []
    trainer = trainer_for(engine)
    if chains > 1 and engine == "numpyro":
        from gmppl.ensemble import can_vmap, run_chains_vmapped

        if can_vmap(backend):  # one compiled program trains every chain
            bar = Progress(steps, enabled=progress, desc=f"{type(backend).__name__}[{engine}] x{chains} chains")
            histories = run_chains_vmapped(
                programs,
                backend,
                x,
                steps=int(steps),
                batch_size=batch_size,
                seeds=[seed + c for c in range(chains)],
                optim=optim,
                callbacks=tuple(callbacks),
                progress=bar,
            )
            seconds = [bar.close()] * chains
    for c, program in enumerate(programs if not histories else []):
        bar = Progress(
            steps, enabled=progress, desc=f"{type(backend).__name__}[{engine}]" + (f" chain {c}" if chains > 1 else "")
        )
        run = getattr(backend, "run", None) or trainer.run  # samplers (NUTS) bring their own loop
        _, history = run(
            program,
            backend,
            x,
            steps=int(steps),
            batch_size=batch_size,
            seed=seed + c,
            optim=optim,
            callbacks=tuple(callbacks),
            progress=bar,
        )
        seconds.append(bar.close())
        histories.append(history)

    return Fit(
        model=model,
        engine=engine,
        backend=backend,
        programs=programs,
        info=infos[0],
        histories=histories,
        data=x,
        config={
            "steps": int(steps),
            "batch_size": batch_size,
            "seed": seed,
            "chains": chains,
            "observed": observed,
            "latent": latent,
            "device": str(device) if device is not None else None,
            "optim": repr(optim),
            "train_seconds": seconds,
        },
    )
