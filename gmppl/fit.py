"""``gm.fit``: the one entry point and the one training loop.

Everything is checked before step 1 (the data, the program's sites, the backend's needs). The
engine's loop runs steps in chunks (a Python loop on torch, a jitted ``lax.scan`` on JAX, vmapped
over chains); this module owns what happens between chunks, the same on both engines: the NaN
stop-and-restore, progress, validation and early stopping, callbacks and the history.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from gmppl import checkpoint as ckpt
from gmppl._data import check_seed, split_data
from gmppl.checkpoint import check_directory
from gmppl.engines import ENGINES, check_signature, detect_engine, distributed, make_loop, make_program, resolve_devices
from gmppl.engines.base import serial
from gmppl.errors import (
    BackendError,
    CheckpointError,
    DataError,
    DeviceError,
    ModelError,
    TrainingError,
    UnknownName,
)
from gmppl.inference.base import Backend, SamplerBackend
from gmppl.optim import as_optim
from gmppl.progress import Progress
from gmppl.result import Fit

log = logging.getLogger("gmppl")

#: Steps between two looks at the training (NaN check, progress, callbacks), on both engines.
LOG_EVERY = 100


@serial
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
    validation: Any = None,
    validate_every: int | None = None,
    patience: int | None = None,
    callbacks: Sequence[Callable[..., Any]] = (),
    checkpoint: Any = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    devices: Any = None,
    progress: bool = True,
) -> Fit:
    """Fit a Pyro or NumPyro program ``model(x=None, n=None)`` to ``data`` with an inference ``backend``.

    ``theta* = argmin_theta D(P_X || P_theta)`` where ``D`` is the backend's divergence (forward
    KL for ``Likelihood``/``ELBO``, an f-divergence or W1 for ``Adversarial``, Fisher for ``Score``).

    - ``data``: an array (examples on axis 0), or a mapping of named arrays with one row per example:
      the one named ``observed`` is the data, the others are *inputs* (covariates, labels, context),
      minibatched with their rows and passed to the program by keyword (``model(x=..., y=...)``); a
      conditional program ``model(x=None, y=None)`` then models ``p(x | y)``.

    - ``optim``: ``gm.optim.Adam(...)``, a float (Adam's learning rate), an optax transformation, a
      ``pyro.optim``/``numpyro.optim`` optimiser, or a torch factory ``params -> torch.optim.Optimizer``.
    - ``validation``: held-out data scored every ``validate_every`` steps (default: ``steps // 10``)
      into ``history["val_loss"]``/``["val_step"]`` (the backend's objective on it, with fixed noise);
      ``patience=k`` stops after ``k`` validations without improvement and keeps the best validated values.
    - ``callbacks``: each called as ``cb(step, metrics)`` or ``cb(step, metrics, params)`` every
      ``LOG_EVERY`` (100) steps, at each validation and at the last step; ``metrics`` holds the last
      step's values (averaged over chains), ``params`` the fitted values as in ``Fit.params``. A callback
      that raises stops the fit; the error carries the fit so far as ``error.fit``.
    - ``chains=C``: C independently seeded fits (seeds ``seed + c``), an ensemble.
    - ``devices=N`` (or a list of JAX devices), NumPyro programs, optimising backends; inside the same jitted
      scan, over a 1-D device mesh:

      - one chain: each minibatch (``batch_size`` is the global batch, a multiple of N) is split over the
        devices, parameters replicated; the gradient is the global batch's mean, so the fit is the
        one-device fit up to reduction order.
      - ``chains=C``: the chains are spread over the devices, C/N whole chains each, every chain on its
        full batch, so the ensemble is the one-device ``chains=C`` fit up to reduction order. C must be a
        multiple of N (refused before training otherwise: a batch split inside chains is not done).

      Checkpoints hold the state gathered on the host: a fit on N devices resumes on any number that fits.
      Several hosts: call ``jax.distributed.initialize()`` first on each and pass ``devices=jax.devices()``
      (``docs/design.md``, "Several hosts").
    - ``checkpoint=DIR``: every ``checkpoint_every`` steps (default ``steps // 10``) and at the end, write
      everything the next step needs (parameters, optimiser states, averaged iterates, data order and
      position, random states, history) atomically into DIR; ``resume=True`` continues from the newest
      one to ``steps`` in total (on CPU, bitwise the uninterrupted fit). A checkpoint of another fit
      (other data, model or settings) is refused. Ctrl-C stops at once and returns the fit so far.

    Example::

        fit = gm.fit(model, x_train, gm.inference.Likelihood(), steps=2000, batch_size=256)
        fit.log_prob(x_test).mean()
    """
    from gmppl.inference import Likelihood

    x, inputs = split_data(data, observed)
    backend = Likelihood() if backend is None else backend
    if not isinstance(backend, Backend):
        raise BackendError(
            f"backend={backend!r} is not a gmppl backend; use one from gm.inference, e.g. "
            "gm.inference.Likelihood(), ELBO(), Adversarial(divergence='js'), Score()."
        )
    for name, value in (("steps", steps), ("batch_size", batch_size), ("chains", chains)):
        _check_positive(name, value)
    seed = check_seed(seed, count=chains)
    for name, optional in (
        ("validate_every", validate_every),
        ("patience", patience),
        ("checkpoint_every", checkpoint_every),
    ):
        if optional is not None:
            _check_positive(name, optional)
    if (validate_every is not None or patience is not None) and validation is None:
        raise BackendError("validate_every= and patience= need held-out data: pass validation=x_val.")
    if (checkpoint_every is not None or resume) and checkpoint is None:
        raise BackendError("checkpoint_every= and resume=True need a directory: pass checkpoint=DIR.")
    ckpt_dir = None if checkpoint is None else check_directory(checkpoint)
    if engine is not None and engine not in ENGINES:
        raise UnknownName(f"engine={engine!r} is unknown; use one of {ENGINES} (or None to detect).")
    if not callable(model):
        raise ModelError(f"model={model!r} is not callable; pass a Pyro or NumPyro program model(x=None, n=None).")
    x_val: np.ndarray | None = None
    val_inputs: dict[str, np.ndarray] = {}
    if validation is not None:
        x_val, val_inputs = split_data(validation, observed, name="validation")
        x_val = x_val.astype(x.dtype, copy=False)
        if x_val.shape[1:] != x.shape[1:]:
            raise DataError(
                f"validation examples have shape {x_val.shape[1:]} but the data's are {x.shape[1:]}; "
                "pass held-out data shaped like the training data."
            )
        if sorted(val_inputs) != sorted(inputs):
            raise DataError(
                f"validation has inputs {sorted(val_inputs)} but the data have {sorted(inputs)}; give both the same."
            )
    callbacks = tuple(callbacks) if not callable(callbacks) else (callbacks,)
    for cb in callbacks:
        if not callable(cb):
            raise BackendError(f"callbacks: {cb!r} is not callable; pass functions cb(step, metrics[, params]).")

    example = x[: min(len(x), 8)]
    example_inputs = {k: v[: len(example)] for k, v in inputs.items()}
    call = check_signature(model, observed, tuple(inputs))
    if engine is None:
        engine = detect_engine(model, example, observed=observed, inputs=example_inputs)
    batch_size = min(int(batch_size), len(x))
    optim = as_optim(optim, backend.default_optim)
    mesh = resolve_devices(devices, engine, batch_size, chains)
    if mesh is not None and len(mesh) > 1 and isinstance(backend, SamplerBackend):
        raise DeviceError(
            f"devices={len(mesh)}: {type(backend).__name__} draws with the PPL's own sampler on one device; "
            "devices= spreads optimising backends (Likelihood, ELBO, Adversarial, ...) over devices: drop devices=."
        )
    world = None
    if distributed.launched():  # one of N processes started by torchrun: this rank's share of each batch
        if engine != "pyro":
            raise DeviceError(
                f"this process is one of {os.environ['WORLD_SIZE']} launched by torchrun, which makes Pyro fits "
                "data-parallel; a NumPyro fit shards its batches over JAX devices in one process: run it without "
                "torchrun and pass devices=N."
            )
        device = distributed.device_for(device)
        world = distributed.join(device)
    seeds = [int(seed) + c for c in range(chains)]

    programs, plans, info = [], [], None
    sampler = isinstance(backend, SamplerBackend)
    for c in range(chains):
        program = make_program(engine, model, observed=observed, latent=latent, device=device, call=call)
        info = program.inspect(example, example_inputs)
        backend.check(info)
        plans.append(backend.prepare(program, info, example, seed=seeds[c], inputs=example_inputs))
        if c > 0 and not sampler:  # a sampler's chains share the target; an ensemble's start afresh
            from gmppl.ensemble import reinitialise

            reinitialise(program, seed=seeds[c])
        programs.append(program)
    assert info is not None

    desc = f"{type(backend).__name__}[{engine}]" + (f" x{chains} chains" if chains > 1 else "")
    if world is not None:
        desc += f" on {world.size} processes"
    bar = Progress(steps, enabled=progress and distributed.is_writer(engine), desc=desc)
    config = {
        "steps": int(steps),
        "batch_size": batch_size,
        "seed": int(seed),
        "chains": chains,
        "observed": observed,
        "latent": latent,
        "inputs": sorted(inputs),
        "device": str(device) if device is not None else None,
        "devices": len(mesh) if mesh is not None else 1,
        "optim": repr(optim),
    }

    def make_fit(histories: list[dict], draws: list | None = None) -> Fit:
        return Fit(
            model=model,
            engine=engine,
            backend=backend,
            programs=programs,
            plans=plans,
            info=info,
            histories=histories,
            data=x,
            inputs=inputs,
            config=config,
            draws=draws,
        )

    if isinstance(backend, SamplerBackend):
        if ckpt_dir is not None:
            raise BackendError(
                f"{type(backend).__name__} draws its samples in one call to the PPL's sampler, which gmppl cannot "
                "checkpoint; drop checkpoint=, or fit with an optimising backend."
            )
        num = backend.num_draws(int(steps))
        results = []
        for p, plan, s in zip(programs, plans, seeds, strict=True):
            with p.scope():
                results.append(backend.draw(p, plan, x, num_samples=num, seed=s, inputs=inputs))
        stats = [h for _, h in results]
        bar.update(num, float(-np.mean(stats[0]["lp"])) if "lp" in stats[0] else float("nan"))
        config["train_seconds"] = [bar.close()] * chains
        result = make_fit(stats, [d for d, _ in results])
        _call(callbacks, num, {k: float(np.mean([h[k].mean() for h in stats])) for k in stats[0]}, result)
        return result

    loop = make_loop(
        engine, programs, backend, plans, x, batch_size=batch_size, steps=int(steps), inputs=inputs, devices=mesh
    )
    state = loop.init(seeds, optim)
    rows: list[dict[str, np.ndarray]] = []
    every = None
    if ckpt_dir is not None:
        from gmppl.io import backend_config

        every = int(checkpoint_every or max(1, int(steps) // 10))
        fp = ckpt.fingerprint(
            x,
            inputs,
            engine=engine,
            backend=type(backend).__name__,
            backend_config=backend_config(backend),
            seed=int(seed),
            chains=chains,
            batch_size=batch_size,
            observed=observed,
            optim=repr(optim),
            validation=None if x_val is None else ckpt.fingerprint(x_val, val_inputs)["data"],
        )
        if world is not None:  # every rank's random state is in it: resume with as many processes
            fp["world_size"] = world.size
        fp = json.loads(json.dumps(fp))  # as it reads back
        existing = ckpt.steps(ckpt_dir)
        if existing and not resume:
            raise CheckpointError(
                f"{ckpt_dir} holds checkpoints of a fit (the newest at step {existing[-1]}): pass resume=True to "
                "continue it, or choose another directory."
            )
    val_every = None if x_val is None else int(validate_every or max(1, int(steps) // 10))
    validators = None
    if x_val is not None:  # one per chain, by program
        validators = {
            id(p): backend.validator(p, plan, x_val, val_inputs) for p, plan in zip(programs, plans, strict=True)
        }
    val_loss: list[np.ndarray] = []
    val_step: list[int] = []
    best, best_value, since_best = None, np.inf, 0
    done = 0
    if every is not None and resume and existing:
        assert ckpt_dir is not None
        arrays, meta = ckpt.read(ckpt_dir, existing[-1])
        if meta["fingerprint"] != fp:
            diff = sorted(k for k in set(fp) | set(meta["fingerprint"]) if fp.get(k) != meta["fingerprint"].get(k))
            raise CheckpointError(
                f"the checkpoint in {ckpt_dir} is from another fit (its {', '.join(diff)} differ): resume it with "
                "the same data, model, backend and settings, or choose another directory."
            )
        if meta["step"] > steps:
            raise CheckpointError(f"the checkpoint in {ckpt_dir} is at step {meta['step']}, past steps={steps}.")
        part = {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}
        state = loop.from_arrays(state, part, meta["loop"])
        done = int(meta["step"])
        rows = [{k[5:]: v for k, v in arrays.items() if k.startswith("hist/")}] if done else []
        val_step = list(meta["val_step"])
        val_loss = list(arrays["val/loss"]) if val_step else []
        best_value, since_best = float(meta["best_value"]), int(meta["since_best"])
        if meta.get("best"):
            part = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")}
            best = loop.snapshot(loop.from_arrays(loop.init(seeds, optim), part, meta["best"]))
            state = loop.from_arrays(
                state, {k[6:]: v for k, v in arrays.items() if k.startswith("state/")}, meta["loop"]
            )
        log.info("resuming from %s at step %d", ckpt_dir, done)
    good = loop.snapshot(state)

    def histories() -> list[dict[str, np.ndarray]]:
        hist = [{k: np.concatenate([r[k][c] for r in rows]) for k in rows[0]} for c in range(chains)] if rows else []
        if val_step:
            for c, h in enumerate(hist):
                h["val_loss"] = np.array([v[c] for v in val_loss])
                h["val_step"] = np.array(val_step)
        return hist

    def stop(error: TrainingError) -> TrainingError:
        loop.finish(state)
        config["train_seconds"] = [bar.close()] * chains
        error.fit = make_fit(histories())
        return error

    def save_checkpoint() -> None:
        assert ckpt_dir is not None
        arrays, loop_meta = loop.to_arrays(state)
        out = {f"state/{k}": v for k, v in arrays.items()}
        if rows:
            out.update({f"hist/{k}": np.concatenate([r[k] for r in rows], axis=1) for k in rows[0]})
        if val_step:
            out["val/loss"] = np.stack(val_loss)
        best_meta = None
        if best is not None:
            best_arrays, best_meta = loop.to_arrays(best)
            out.update({f"best/{k}": v for k, v in best_arrays.items()})
        meta = {
            "fingerprint": fp,
            "loop": loop_meta,
            "val_step": val_step,
            "best_value": best_value,
            "since_best": since_best,
            "best": best_meta if best is not None else None,
        }
        if distributed.is_writer(engine):  # the arrays above took every rank's (host's) part; rank (process) 0 writes
            ckpt.write(ckpt_dir, done, out, meta)

    with _deferred_interrupt() as ctrl_c:
        while done < steps:
            k = min(LOG_EVERY, loop.chunk, int(steps) - done)
            if val_every is not None:
                k = min(k, val_every - done % val_every)
            if every is not None:
                k = min(k, every - done % every)
            try:
                state, metrics = loop.run_chunk(state, k, done)
            except KeyboardInterrupt:
                log.warning("interrupted at step %d: returning the fit so far", done)
                state = loop.restore(state, good)
                config["interrupted"] = True
                if every is not None and done:
                    save_checkpoint()  # where it stopped: resume=True goes on from here
                break
            loss = metrics["loss"]
            bad = ~np.isfinite(loss)
            if bad.any():
                chain, i = (int(j[0]) for j in np.nonzero(bad))
                state = loop.restore(state, good)
                where = f"chain {chain}: " if chains > 1 else ""
                raise stop(
                    TrainingError(
                        f"{where}the loss became {loss[chain, i]} at step {done + i}; the parameters were kept from step "
                        f"{done}. Lower the learning rate (optim=gm.optim.Adam(lr=...)), clip gradients "
                        "(gm.optim.Adam(clip_norm=...)) or check the model."
                    )
                )
            snap = loop.snapshot(state)
            if not loop.finite(snap):  # a parameter (or optimiser moment) went non-finite while the loss stayed finite
                state = loop.restore(state, good)
                raise stop(
                    TrainingError(
                        f"a parameter became non-finite in steps {done}..{done + k - 1} while the loss stayed finite; the "
                        f"parameters were kept from step {done}. Lower the learning rate (optim=gm.optim.Adam(lr=...)), "
                        "clip gradients (gm.optim.Adam(clip_norm=...)) or check the model."
                    )
                )
            rows.append(metrics)
            done += k
            good = snap
            bar.update(done, float(np.mean(loss[:, -1])))
            stopping = False
            if validators is not None and (done % val_every == 0 or done == steps):
                values = np.array(loop.evaluate(state, lambda p, plan: validators[id(p)]()))
                val_loss.append(values)
                val_step.append(done)
                if np.mean(values) < best_value:
                    best, best_value, since_best = loop.snapshot(state) if patience else None, float(np.mean(values)), 0
                else:
                    since_best += 1
                    stopping = patience is not None and since_best >= patience
                metrics = {**metrics, "val_loss": values[:, None]}
            if callbacks:
                try:
                    _call(callbacks, done, {k: float(np.mean(v[:, -1])) for k, v in metrics.items()}, loop, state)
                except KeyboardInterrupt:
                    log.warning("interrupted at step %d: returning the fit so far", done)
                    config["interrupted"] = stopping = True
                except Exception as e:
                    raise stop(TrainingError(f"a callback raised at step {done}: {type(e).__name__}: {e}")) from e
            if ctrl_c["hit"] if world is None else distributed.any_rank(ctrl_c["hit"]):  # all ranks stop together
                log.warning("interrupted at step %d: returning the fit so far", done)
                config["interrupted"] = stopping = True
            if every is not None and (done % every == 0 or done == steps or stopping):
                save_checkpoint()
            if stopping:
                if not config.get("interrupted"):
                    log.info("early stop at step %d: no improvement in %d validations", done, patience)
                break
    if best is not None:
        state = loop.restore(state, best)
    loop.finish(state)
    config["train_seconds"] = [bar.close()] * chains
    config["steps_run"] = done
    result = make_fit(histories())
    if hasattr(backend, "fitted_guide"):  # SVI over global sites: draws from the guide make the fit Bayesian
        result.guide_draws()
    return result


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[dict[str, bool]]:
    """Ctrl-C during training sets a flag that the loop reads after each chunk, so the fit stops between
    steps (never inside an optimiser update or a checkpoint write); a second Ctrl-C interrupts at once.
    Off the main thread, where Python delivers no signals, nothing changes."""
    flag = {"hit": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        flag["hit"] = True
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise BackendError(f"{name}={value!r} must be a positive integer.")


def _call(callbacks: tuple, step: int, metrics: dict[str, float], *where: Any) -> None:
    """Call each callback with ``(step, metrics)``, or ``(step, metrics, params)`` when it takes three."""
    params: dict | None = None
    for cb in callbacks:
        if _arity(cb) >= 3:
            if params is None:
                params = _params(*where)
            cb(step, metrics, params)
        else:
            cb(step, metrics)


def _params(*where: Any) -> dict:
    if len(where) == 1:  # a finished fit
        return where[0].params
    loop, state = where
    out = loop.evaluate(state, lambda p, plan: Fit.numpy_params(p))
    return out[0] if len(out) == 1 else {k: np.stack([o[k] for o in out]) for k in out[0]}


def _arity(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 3
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
