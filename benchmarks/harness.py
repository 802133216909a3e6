"""The benchmark harness: gmppl vs the hand-written loop a user would otherwise write, in one run.

Each benchmark module defines ``cases(quick: bool) -> list[Case]``; a case is a named callable
that runs ``steps`` training steps and returns an optional quality number. Every case is measured
twice, and every gmppl case is compared with its baseline both ways in the same run:

- cold: the wall clock of a fresh Python process that imports the benchmark module, builds its cases,
  looks the case up by name and runs it for ``steps`` steps (``python -m benchmarks.cold MODULE CASE
  STEPS``): interpreter start, imports, model build, tracing / compilation and the steps, what a user
  waits for. gmppl's persistent JAX compilation cache is off there (``GMPPL_JAX_CACHE=off``: a first
  run, as the hand-written loops have none; ``bench_coldstart`` measures the warm cache). Each cold
  process also builds the module's other cases (data, networks, imports of both engines): a process
  that builds them and runs none is timed too and printed under the table.
- warm: the case warmed up once (compilation excluded), then its steady state, best of ``repeats``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu" if not os.environ.get("GMPPL_BENCH_GPU") else "")
#: The torch device of gmppl's fits and the hand-written torch loops (``GMPPL_BENCH_GPU=1``: "cuda").
DEVICE = "cuda" if os.environ.get("GMPPL_BENCH_GPU") else "cpu"


def on_device() -> Any:
    """A context making ``DEVICE`` torch's default device for a hand-written loop (nothing on CPU: the
    context intercepts every torch call, which would slow the CPU baselines)."""
    import contextlib

    import torch

    return contextlib.nullcontext() if DEVICE == "cpu" else torch.device(DEVICE)


def steady(stamps: list[tuple[int, float]], steps: int) -> float:
    """Seconds for ``steps`` steps at the rate between the first and last ``(steps done, clock)`` stamps (the
    steps before the first stamp, which hold setup, tracing and compilation, are left out). A fit's callback
    reports its own step count, so the rate does not depend on how often ``gm.fit`` calls back."""
    if len(stamps) < 2:
        return float("inf")
    return (stamps[-1][1] - stamps[0][1]) / (stamps[-1][0] - stamps[0][0]) * steps


def ema_decay(ema: float, t: Any) -> Any:
    """gmppl's averaging weight at step ``t = 1, 2, ...``: ``min(ema, (1 + t) / (10 + t))``
    (``gmppl.inference.averaging.decay``, written out as a user matching the default would)."""
    if isinstance(t, int):
        return min(ema, (1.0 + t) / (10.0 + t))
    import jax.numpy as jnp

    return jnp.minimum(ema, (1.0 + t) / (10.0 + t))


def timed_fit(
    model: Any, data: Any, backend: Any, steps: int, *, clock: Callable[[], float] = time.perf_counter, **kw: Any
) -> tuple[Any, float, float]:
    """``gm.fit(model, data, backend, steps=steps, **kw)`` stamped at each callback (once per 100-step chunk):
    the fit, the seconds ``steps`` steps take in steady state (:func:`steady`) and the seconds to the first
    stamp (setup, tracing, compilation and the first chunk)."""
    import gmppl as gm

    stamps: list[tuple[int, float]] = []
    t0 = clock()
    fit = gm.fit(
        model,
        data,
        backend,
        steps=steps,
        progress=False,
        callbacks=[lambda step, m: stamps.append((step, clock()))],
        **kw,
    )
    return fit, steady(stamps, steps), stamps[0][1] - t0


def jax_scan_loop(
    loss: Callable[[Any, Any], Any],
    params: Any,
    opt: Any,
    steps: int,
    chunk: int,
    clock: Callable[[], float] = time.perf_counter,
    ema: float | None = None,
) -> tuple[Any, list[Any], list[tuple[int, float]]]:
    """The hand-written JAX loop: ``chunk`` optax steps of ``loss(params, key)`` per jitted ``lax.scan``, a fresh
    key per step, a host sync per chunk (as gmppl's loop does). Returns the parameters, each chunk's losses and
    a ``(steps done, clock)`` stamp after each chunk (for :func:`steady`). ``ema``: also carry the average of the
    iterates with gmppl's decay (:func:`ema_decay`) and return it in place of the last iterate."""
    import jax
    import numpy as np
    import optax

    @jax.jit
    def run(carry: tuple, key: Any) -> tuple:
        def body(carry: tuple, k: Any) -> tuple:
            p, s, avg, t = carry
            value, g = jax.value_and_grad(loss)(p, k)
            updates, s = opt.update(g, s, p)
            p = optax.apply_updates(p, updates)
            if ema is not None:
                t = t + 1
                d = ema_decay(ema, t.astype(np.float32))
                avg = jax.tree.map(lambda e, q: (d * e + (1 - d) * q).astype(q.dtype), avg, p)
            return (p, s, avg, t), value

        return jax.lax.scan(body, carry, jax.random.split(key, chunk))

    carry = (params, opt.init(params), params if ema is not None else None, np.zeros((), np.int32))
    key = jax.random.PRNGKey(0)
    losses, stamps = [], []
    for i in range(max(1, steps // chunk)):
        key, k = jax.random.split(key)
        carry, values = run(carry, k)
        losses.append(np.asarray(values))
        stamps.append(((i + 1) * chunk, clock()))
    return (carry[2] if ema is not None else carry[0]), losses, stamps


@dataclass
class Case:
    """``run(steps) -> quality or None``; ``baseline`` names the case this one is compared with.

    ``run`` may return ``(quality, seconds)`` to time only its steady state (e.g. without JAX compilation).
    """

    name: str
    run: Callable[[int], float | None]
    steps: int
    warmup: int = 20
    baseline: str | None = None
    quality_name: str = ""
    result: dict = field(default_factory=dict)
    #: whether the case is a fit, timed cold and warm (False: e.g. a case that prints a table; no rate shown)
    cold: bool = True

    def __post_init__(self) -> None:
        #: the case's own run, kept when a module wraps ``run`` (``bench_score._interleave``): a cold process
        #: runs this one case, never its group.
        self.direct = self.run


#: cold processes per case, best kept (``GMPPL_BENCH_COLD_REPEATS``; each is a whole run of the case's steps)
COLD_REPEATS = int(os.environ.get("GMPPL_BENCH_COLD_REPEATS", "1"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cold_process(module: str, case: str | None, steps: int, quick: bool = False) -> dict:
    """Run case ``case`` of ``benchmarks.<module>`` for ``steps`` steps in a fresh interpreter (None: build the
    cases and run none). Returns ``{"seconds": the process's wall clock, "run_s": the run's own}``."""
    env = {**os.environ, "PYTHONPATH": ROOT, "GMPPL_JAX_CACHE": "off", "GMPPL_BENCH_QUICK": "1" if quick else ""}
    cmd = [sys.executable, "-m", "benchmarks.cold", module, case if case is not None else "", str(steps)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode:
        raise RuntimeError(f"cold process {module} {case!r} failed:\n{res.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(res.stdout.strip().splitlines()[-1])}


def cold_cases(module: str, cases: list[Case], repeats: int = 1, quick: bool = False) -> float:
    """Time a cold process of every case (best of ``repeats``, the cases taking turns) into ``case.result``;
    returns the wall clock of a process that builds the cases and runs none."""
    todo = [c for c in cases if c.cold]
    best: dict[str, float] = {}
    setup = float("inf")
    for _ in range(repeats):
        setup = min(setup, cold_process(module, None, 0, quick)["seconds"])
        for c in todo:
            seconds = cold_process(module, c.name, c.steps, quick)["seconds"]
            best[c.name] = min(best.get(c.name, float("inf")), seconds)
    for c in todo:
        c.result["cold_s"] = best[c.name]
    return setup


def time_case(case: Case, repeats: int = 3) -> dict:
    case.run(case.warmup)  # compile / warm caches
    best = float("inf")
    quality = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        quality = case.run(case.steps)
        seconds = time.perf_counter() - t0
        if isinstance(quality, tuple):  # (quality, seconds): the case timed its own steady state
            quality, seconds = quality
        best = min(best, seconds)
    case.result.update({"steps_per_s": case.steps / best, "seconds": best, "quality": quality})
    return case.result


def report(title: str, cases: list[Case], setup_s: float | None = None) -> str:
    """The table: cold process seconds and warm steady-state steps/s, each with the ratio to the baseline.

    Both ratios read "higher is better for gmppl": cold is the baseline's seconds over the case's (0.5x: the
    case's process took twice as long), warm is the case's rate over the baseline's."""
    by_name = {c.name: c for c in cases}
    lines = [
        f"### {title}",
        "",
        "| case | cold s | cold vs baseline | warm steps/s | warm vs baseline | quality |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        r = c.result
        base = by_name[c.baseline].result if c.baseline in by_name else None
        cold = f"{r['cold_s']:.1f}" if "cold_s" in r else ""
        cold_ratio = warm_ratio = ""
        if base is not None and "cold_s" in r and "cold_s" in base:
            cold_ratio = f"{base['cold_s'] / r['cold_s']:.2f}x"
        if base is not None:
            warm_ratio = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x"
        if c.baseline:
            cold_ratio, warm_ratio = (f"{v} {c.baseline}" if v else v for v in (cold_ratio, warm_ratio))
        q = "" if r.get("quality") is None else f"{c.quality_name} {r['quality']:.4g}"
        warm = f"{r['steps_per_s']:.0f}" if c.cold else ""  # not a fit (a table printed by the case): no rate
        lines.append(f"| {c.name} | {cold} | {cold_ratio} | {warm} | {warm_ratio} | {q} |")
    if setup_s is not None:
        lines += [
            "",
            f"Cold: one fresh process per case ({', '.join(sorted({str(c.steps) for c in cases if c.cold}))} steps); "
            f"{setup_s:.1f} s of each is the process that imports the module and builds its cases, running none. "
            "Warm: steady state after a warm-up, best of the repeats. Both ratios are the case's speed over its "
            "baseline's (the baseline's seconds over the case's): above 1x the case is faster.",
        ]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run_cases(
    title: str,
    cases: list[Case],
    repeats: int = 3,
    *,
    module: str | None = None,
    quick: bool = False,
    cold_repeats: int = 1,
) -> str:
    """Cold processes of every case (when ``module``, e.g. ``"bench_vae"``, is given; ``quick``: the module's
    ``cases(quick)`` as the caller built them), then the warm steady state of each; prints and returns the table."""
    setup = cold_cases(module, cases, cold_repeats, quick) if module else None
    for c in cases:
        time_case(c, repeats)
    return report(title, cases, setup)
