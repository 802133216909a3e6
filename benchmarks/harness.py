"""The benchmark harness: gmppl vs the hand-written loop a user would otherwise write, in one run.

Each benchmark module defines ``cases(quick: bool) -> list[Case]``; a case is a named callable
that runs ``steps`` training steps and returns an optional quality number. The harness warms
each case up once (compilation excluded), times the rest, and prints steps/s and the ratio of
every gmppl case to its baseline.
"""

from __future__ import annotations

import os
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


def jax_scan_loop(
    loss: Callable[[Any, Any], Any],
    params: Any,
    opt: Any,
    steps: int,
    chunk: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[Any, list[Any], list[tuple[int, float]]]:
    """The hand-written JAX loop: ``chunk`` optax steps of ``loss(params, key)`` per jitted ``lax.scan``, a fresh
    key per step, a host sync per chunk (as gmppl's loop does). Returns the parameters, each chunk's losses and
    a ``(steps done, clock)`` stamp after each chunk (for :func:`steady`)."""
    import jax
    import numpy as np
    import optax

    @jax.jit
    def run(params: Any, opt_state: Any, key: Any) -> tuple:
        def body(carry: tuple, k: Any) -> tuple:
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, k)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, opt_state), values = jax.lax.scan(body, (params, opt_state), jax.random.split(key, chunk))
        return params, opt_state, values

    opt_state, key = opt.init(params), jax.random.PRNGKey(0)
    losses, stamps = [], []
    for i in range(max(1, steps // chunk)):
        key, k = jax.random.split(key)
        params, opt_state, values = run(params, opt_state, k)
        losses.append(np.asarray(values))
        stamps.append(((i + 1) * chunk, clock()))
    return params, losses, stamps


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
    case.result = {"steps_per_s": case.steps / best, "seconds": best, "quality": quality}
    return case.result


def report(title: str, cases: list[Case]) -> str:
    by_name = {c.name: c for c in cases}
    lines = [f"### {title}", "", "| case | steps/s | vs baseline | quality |", "|---|---:|---:|---:|"]
    for c in cases:
        r = c.result
        ratio = ""
        if c.baseline and c.baseline in by_name:
            ratio = f"{r['steps_per_s'] / by_name[c.baseline].result['steps_per_s']:.2f}x {c.baseline}"
        q = "" if r.get("quality") is None else f"{c.quality_name} {r['quality']:.4g}"
        lines.append(f"| {c.name} | {r['steps_per_s']:.0f} | {ratio} | {q} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run_cases(title: str, cases: list[Case], repeats: int = 3) -> str:
    for c in cases:
        time_case(c, repeats)
    return report(title, cases)
