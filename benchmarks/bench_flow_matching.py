"""Flow matching: gmppl's ``FlowMatching`` vs the hand-written conditional-flow-matching loop, same net and data.

The model is a ``gm.models.ContinuousFlow`` whose velocity is ``ScoreMLP(2)`` (3 hidden layers of 128 SiLU
units + a 32-d sinusoidal time embedding) on two moons, batch 256, Adam(2e-3), the OT path with
``sigma_min = 1e-3`` and independent coupling. The baselines are the loops a user writes without gmppl:

    x0 ~ N(0, I), t ~ U(0, 1), x_t = (1 - (1 - sigma_min) t) x0 + t x1, u = x1 - (1 - sigma_min) x0,
    loss = mean_i || v(x_t, t) - u ||^2

- torch: one Python step per batch with ``torch.optim.Adam`` and with the fused Adam gmppl builds for
  ``gm.optim.Adam`` (gmppl's baseline), one intra-op thread as gmppl uses on CPU, against ``gm.fit`` of the
  Pyro program (``pyro.module`` + ``plate`` + ``ContinuousFlow``); steady state from step 100, in the main
  thread's CPU time.
- JAX: a ``jit`` + ``lax.scan`` of 100 optax Adam steps per dispatch on the equinox net, against ``gm.fit``
  of the NumPyro program. Both in steady state: the first 100-step chunk, which holds the compilation,
  is left out.

Quality: the mean training loss over the last 50 steps (the same objective for all). Each gmppl case and
its baseline run alternately, best of 3 (``bench_score._interleave``), so that the load of a shared machine
cannot favour one of them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.bench_score import _interleave
from benchmarks.harness import DEVICE, Case, jax_scan_loop, on_device, steady, timed_fit

TITLE = "FlowMatching (OT path, ContinuousFlow + ScoreMLP, moons) steps/s vs plain torch / JAX CFM loops"
BATCH, LR, SIGMA_MIN, CHUNK = 256, 2e-3, 1e-3, 100


def _moons(n: int = 4000) -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(n, noise=0.05, random_state=0)[0].astype(np.float32)


# ---------------------------------------------------------------------- torch
def _torch_cases(x: np.ndarray) -> list[Case]:
    import pyro
    import torch

    import gmppl as gm

    xt = torch.as_tensor(x, device=DEVICE)
    clock = time.thread_time if DEVICE == "cpu" else time.perf_counter  # one thread: the main thread's CPU time

    def plain(steps: int, fused: bool = False) -> tuple[float, float]:
        with on_device():  # the net and every draw on the benchmark device
            torch.set_num_threads(1)
            torch.manual_seed(0)
            net = gm.models.ScoreMLP(2)
            opt = torch.optim.Adam(net.parameters(), lr=LR, fused=fused or None)
            gen = torch.Generator(device=DEVICE).manual_seed(0)
            losses, stamps = [], []
            for i in range(steps):
                x1 = xt[torch.randint(len(xt), (BATCH,), generator=gen)]
                x0 = torch.randn_like(x1)
                t = torch.rand(BATCH)
                xs = (1 - (1 - SIGMA_MIN) * t)[:, None] * x0 + t[:, None] * x1
                loss = (net(xs, t) - (x1 - (1 - SIGMA_MIN) * x0)).square().sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                if (i + 1) % CHUNK == 0:
                    stamps.append((i + 1, clock()))
            return float(torch.stack(losses[-50:]).mean()), steady(stamps, steps)

    def fitted(steps: int) -> tuple[float, float]:
        torch.manual_seed(0)
        net = gm.models.ScoreMLP(2)

        def model(x: Any = None, n: int | None = None) -> None:
            v = pyro.module("velocity", net)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                pyro.sample("x", gm.models.ContinuousFlow(v), obs=x)

        fit, seconds, _ = timed_fit(
            model,
            x,
            gm.inference.FlowMatching(sigma_min=SIGMA_MIN),
            steps,
            batch_size=BATCH,
            optim=LR,
            device=DEVICE,
            clock=clock,
        )
        return float(fit.history["loss"][-50:].mean()), seconds

    best = "torch loop, fused Adam"  # the Adam gmppl builds for gm.optim.Adam
    return [
        Case("torch loop", plain, steps=0, quality_name="loss"),
        Case(best, lambda n: plain(n, True), steps=0, quality_name="loss"),
        Case("gmppl pyro FlowMatching", fitted, steps=0, baseline=best, quality_name="loss"),
    ]


# ---------------------------------------------------------------------- JAX
def _jax_cases(x: np.ndarray) -> list[Case]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import optax
    from numpyro.contrib.module import eqx_module

    import gmppl as gm

    xj = jnp.asarray(x)
    net0 = gm.models.ScoreMLP(2, key=jax.random.PRNGKey(0))
    params0, static = eqx.partition(net0, eqx.is_inexact_array)
    opt = optax.adam(LR)

    def cfm_loss(params: Any, key: Any) -> Any:
        k1, k2, k3 = jax.random.split(key, 3)
        x1 = xj[jax.random.randint(k1, (BATCH,), 0, len(xj))]
        x0 = jax.random.normal(k2, x1.shape)
        t = jax.random.uniform(k3, (BATCH,))
        xs = (1 - (1 - SIGMA_MIN) * t)[:, None] * x0 + t[:, None] * x1
        v = eqx.combine(params, static)(xs, t)
        return jnp.square(v - (x1 - (1 - SIGMA_MIN) * x0)).sum(1).mean()

    def plain(steps: int) -> tuple[float, float]:  # a fresh jit per run, as in a new script
        _, losses, stamps = jax_scan_loop(cfm_loss, params0, opt, steps, CHUNK)
        return float(np.concatenate(losses)[-50:].mean()), steady(stamps, steps)

    def fitted(steps: int) -> tuple[float, float]:
        def model(x: Any = None, n: int | None = None) -> None:
            v = eqx_module("velocity", net0)
            with numpyro.plate("data", x.shape[0] if x is not None else n):
                numpyro.sample("x", gm.models.ContinuousFlow(v), obs=x)

        fit, seconds, _ = timed_fit(
            model, x, gm.inference.FlowMatching(sigma_min=SIGMA_MIN), steps, batch_size=BATCH, optim=LR
        )
        return float(fit.history["loss"][-50:].mean()), seconds

    base = "jax scan loop, steady state"
    return [
        Case(base, plain, steps=0, quality_name="loss"),
        Case("gmppl numpyro FlowMatching, steady state", fitted, steps=0, baseline=base, quality_name="loss"),
    ]


def cases(quick: bool) -> list[Case]:
    x = _moons()
    steps = 300 if quick else 2000
    torch_cases, jax_cases = _torch_cases(x), _jax_cases(x)
    for c in torch_cases:
        c.steps, c.warmup = steps, 20
    for c in jax_cases:
        c.steps, c.warmup = 2 * steps, 2 * CHUNK
    _interleave(torch_cases, steps)
    _interleave(jax_cases, 2 * steps)
    return torch_cases + jax_cases


if __name__ == "__main__":
    from benchmarks.harness import run_cases

    run_cases(TITLE, cases(quick=False), module="bench_flow_matching")
