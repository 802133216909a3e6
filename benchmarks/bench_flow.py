"""Exact likelihood: ``gm.fit(..., Likelihood())`` vs the hand-written MLE loop, same flow, data and steps.

The model is ``gm.models.flows.spline_coupling(2, layers=4, hidden=(64, 64))`` (rational-quadratic
spline couplings) on two moons, batch 256, Adam(1e-3).

- torch: the loop a user writes without gmppl — ``TransformedDistribution(base, [flow])``,
  ``-log_prob(batch).mean()``, ``torch.optim.Adam`` (and, at one thread, the fused Adam gmppl builds:
  gmppl's baseline there) — against ``gm.fit`` on the same flow inside a Pyro program (``pyro.module`` +
  ``plate`` + ``Pushforward``; ``Likelihood`` runs its log-density as a graph traced once, without Pyro's
  handlers). Both at 1 and at 2 torch intra-op threads (this decides
  the thread count for small models). Steady state from step 100 (setup left out); one thread in the main
  thread's CPU time, two threads in wall time.
- JAX: a ``jit`` + ``lax.scan`` of 100 Adam steps per dispatch (optax) on the equinox flow, against
  ``gm.fit`` of the NumPyro program. Both are timed in steady state: the first 100-step chunk, which
  holds the compilation, is left out (compile seconds are printed apart).

Quality: the mean training loss (NLL, nats) over the last 50 steps — the same objective for all.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.harness import DEVICE, Case, jax_scan_loop, on_device, steady, timed_fit

TITLE = "Likelihood (spline flow, moons) steps/s vs plain torch / JAX MLE loops"
BATCH, LR, LAYERS, HIDDEN, CHUNK, TORCH_CHUNK = 256, 1e-3, 4, (64, 64), 100, 100
COMPILE: dict[str, float] = {}


def _moons(n: int = 4000) -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(n, noise=0.05, random_state=0)[0].astype(np.float32)


# ---------------------------------------------------------------------- torch
def _torch_cases(x: np.ndarray, threads: int) -> list[Case]:
    import pyro
    import pyro.distributions as dist
    import torch

    import gmppl as gm

    xt = torch.as_tensor(x, device=DEVICE)
    base = dist.Normal(torch.zeros(2, device=DEVICE), 1.0).to_event(1)
    # one thread on CPU: the main thread's CPU time (a busy neighbour's share of the core left out)
    clock = time.thread_time if threads == 1 and DEVICE == "cpu" else time.perf_counter

    def plain(steps: int, fused: bool = False) -> tuple[float, float]:
        with on_device():  # the net and every draw on the benchmark device
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            flow = gm.models.flows.spline_coupling(2, layers=LAYERS, hidden=HIDDEN)
            opt = torch.optim.Adam(flow.parameters(), lr=LR, fused=fused or None)
            gen = torch.Generator(device=DEVICE).manual_seed(0)
            losses, stamps = [], []
            for i in range(steps):
                batch = xt[torch.randint(len(xt), (BATCH,), generator=gen)]
                loss = -dist.TransformedDistribution(base, [flow]).log_prob(batch).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                if (i + 1) % TORCH_CHUNK == 0:
                    stamps.append((i + 1, clock()))
            return float(torch.stack(losses[-50:]).mean()), steady(stamps, steps)

    def fitted(steps: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        flow = gm.models.flows.spline_coupling(2, layers=LAYERS, hidden=HIDDEN)

        def model(x: Any = None, n: int | None = None) -> None:
            pyro.module("flow", flow)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.Pushforward(base, flow), obs=x)

        fit, seconds, _ = timed_fit(
            model, x, gm.inference.Likelihood(), steps, batch_size=BATCH, optim=LR, device=DEVICE, clock=clock
        )
        return float(fit.history["loss"][-50:].mean()), seconds

    thr = f"{threads} thr, cpu-s" if clock is time.thread_time else f"{threads} thr"
    loop = f"torch loop ({thr})"
    if threads != 1:
        return [
            Case(loop, plain, steps=0, quality_name="nll"),
            Case(f"gmppl pyro Likelihood ({thr})", fitted, steps=0, baseline=loop, quality_name="nll"),
        ]
    best = f"torch loop, fused Adam ({thr})"  # the Adam gmppl builds for gm.optim.Adam
    return [
        Case(loop, plain, steps=0, quality_name="nll"),
        Case(best, lambda n: plain(n, True), steps=0, quality_name="nll"),
        Case(f"gmppl pyro Likelihood ({thr})", fitted, steps=0, baseline=best, quality_name="nll"),
    ]


# ---------------------------------------------------------------------- JAX
def _jax_cases(x: np.ndarray) -> list[Case]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist
    import optax
    from numpyro.contrib.module import eqx_module

    import gmppl as gm

    xj = jnp.asarray(x)
    base = ndist.Normal(jnp.zeros(2), 1.0).to_event(1)
    flow0 = gm.models.flows.spline_coupling(2, engine="numpyro", layers=LAYERS, hidden=HIDDEN, key=0)
    params0, static = eqx.partition(flow0, eqx.is_inexact_array)
    opt = optax.adam(LR)

    def nll(params: Any, batch: Any) -> Any:
        z, logdet = eqx.combine(params, static).inverse_and_log_det(batch)
        return -(base.log_prob(z) + logdet).mean()

    def plain(steps: int) -> tuple[float, float]:
        def loss(params: Any, key: Any) -> Any:
            return nll(params, xj[jax.random.randint(key, (BATCH,), 0, len(xj))])

        _, losses, stamps = jax_scan_loop(loss, params0, opt, steps, CHUNK)
        return float(np.concatenate(losses)[-50:].mean()), steady(stamps, steps)

    def fitted(steps: int) -> tuple[float, float]:
        def model(x: Any = None, n: int | None = None) -> None:
            g = eqx_module("flow", flow0)
            with numpyro.plate("data", x.shape[0] if x is not None else n):
                numpyro.sample("x", gm.models.Pushforward(base, g), obs=x)

        fit, seconds, first = timed_fit(model, x, gm.inference.Likelihood(), steps, batch_size=BATCH, optim=LR)
        COMPILE["gmppl numpyro (first chunk, s)"] = round(first, 2)
        return float(fit.history["loss"][-50:].mean()), seconds

    return [
        Case("jax scan loop", plain, steps=0, quality_name="nll"),
        Case("gmppl numpyro Likelihood", fitted, steps=0, baseline="jax scan loop", quality_name="nll"),
    ]


def cases(quick: bool) -> list[Case]:
    x = _moons()
    steps = 200 if quick else 600
    # --quick: one thread only (the two-thread cases, timed in wall time, are the noisiest on a shared machine)
    torch_cases = [c for threads in ((1,) if quick else (1, 2)) for c in _torch_cases(x, threads)]
    jax_cases = _jax_cases(x)
    for c in torch_cases:
        c.steps, c.warmup = steps, 20
    for c in jax_cases:
        c.steps, c.warmup = 10 * steps, 2 * CHUNK
    return torch_cases + jax_cases


if __name__ == "__main__":
    from benchmarks.harness import run_cases

    run_cases(TITLE, cases(quick=False), module="bench_flow")
    print(COMPILE)
