"""GAN training throughput: ``gm.inference.Adversarial("gan", generator_loss="nonsaturating")`` vs the
plain loops a user would write, on the 8-Gaussian ring (radius 2, std 0.02).

Same networks on every side: generator and critic MLPs with two hidden layers of 128 units
(generator ReLU, critic leaky ReLU, gmppl's default critic for 2-D data), batch 256, Adam(1e-4,
betas (0.5, 0.999)) for both players, one critic step per generator step, the standard GAN
losses (critic: binary cross-entropy on real/fake logits; generator: ``-log D(G(z))``). gmppl's Adversarial
returns the exponential moving average of the generator's iterates by default (``ema=0.999``), so every hand
loop keeps the same average after each generator step (torch: ``torch._foreach_lerp_``; JAX: a ``tree_map``
in the jitted step) and samples from it.

What is timed: steady-state steps/s on every side, as in ``bench_vae``. The baselines are warmed up
first (their jit compilation excluded) and timed whole; the gmppl cases are timed from the end of
their first chunk (100 steps; torch: program inspection and setup; JAX: those plus tracing
and compiling the 100-step ``lax.scan`` chunk) to the end of the fit, via ``gm.fit(callbacks=)``.
The first chunk's wall time is printed separately (``COMPILE``): on JAX it is a fixed ~5-10 s per
``gm.fit`` call, which a 20000-step fit amortises. Two JAX baselines: the per-step ``jax.jit`` loop a
user writes first, and the same step in 100-step ``lax.scan`` chunks (gmppl's own dispatch shape).
Quality: the share of high-quality samples (within 3 std of a mode) after the run.

One run (earlier: ``--quick`` at 2000 steps, hand loops without the average, best of 3; CPU, 2 cores shared with other jobs): torch plain
loop 58 steps/s, gmppl pyro 52 (0.89x); JAX jit-per-step loop 472, lax.scan loop 599, gmppl numpyro
614 (1.30x and 1.03x); first chunk 1.3 s (pyro) and 2.0 s (numpyro, compile cache warm).

    python benchmarks/bench_gan.py          # 20000 steps per case; prints the ratios and first-chunk times
    python -m benchmarks --quick gan
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Case, ema_decay, timed_fit

TITLE = "GAN (2x128 MLPs, batch 256, Adam 1e-4): gmppl Adversarial vs plain loops"
BATCH = 256
WIDTH = 128
LR, BETAS = 1e-4, (0.5, 0.999)
TORCH_CHUNK, JAX_CHUNK = 25, 100
#: gmppl's Adversarial returns the average of the generator's iterates by default (``ema=0.999``): the hand
#: loops keep the same average (``min(ema, (1 + t) / (10 + t))`` at generator step ``t``) and sample from it
EMA = 0.999
COMPILE: dict[str, float] = {}


def _ring(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = 2 * np.pi * np.arange(8) / 8
    centres = 2.0 * np.stack([np.cos(a), np.sin(a)], 1)
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 8, n)] + 0.02 * rng.normal(size=(n, 2))).astype(np.float32), centres


def _quality(samples: np.ndarray, centres: np.ndarray) -> float:
    import gmppl as gm

    return gm.metrics.mode_coverage(samples, centres, 0.02).high_quality


# ---------------------------------------------------------------------- torch
def _torch_cases(steps: int) -> list[Case]:
    import pyro
    import pyro.distributions as dist
    import torch
    import torch.nn.functional as F

    import gmppl as gm
    from gmppl.models.nets import torch_mlp

    x_np, centres = _ring()
    torch.set_num_threads(1)

    def plain(n_steps: int, fused: bool | None = None) -> float:
        torch.manual_seed(0)
        x = torch.as_tensor(x_np)
        g = torch_mlp(2, 2, width=WIDTH, activation="relu")
        d = torch.nn.Sequential(torch.nn.Flatten(), torch_mlp(2, 1, width=WIDTH, activation="leaky_relu"))
        og = torch.optim.Adam(g.parameters(), lr=LR, betas=BETAS, fused=fused)
        od = torch.optim.Adam(d.parameters(), lr=LR, betas=BETAS, fused=fused)
        ones, zeros = torch.ones(BATCH), torch.zeros(BATCH)
        gp = list(g.parameters())
        avg = [p.detach().clone() for p in gp]
        for i in range(n_steps):
            real = x[torch.randint(len(x), (BATCH,))]
            fake = g(torch.randn(BATCH, 2))
            loss_d = F.binary_cross_entropy_with_logits(d(real).reshape(-1), ones) + F.binary_cross_entropy_with_logits(
                d(fake.detach()).reshape(-1), zeros
            )
            od.zero_grad()
            loss_d.backward()
            od.step()
            loss_g = F.binary_cross_entropy_with_logits(d(fake).reshape(-1), ones)
            og.zero_grad()
            loss_g.backward()
            og.step()
            with torch.no_grad():
                torch._foreach_lerp_(avg, gp, 1.0 - ema_decay(EMA, i + 1))
        with torch.no_grad():
            torch._foreach_copy_(gp, avg)
            return _quality(g(torch.randn(2500, 2)).numpy(), centres)

    def gmppl(n_steps: int) -> float:
        torch.manual_seed(0)
        g = torch_mlp(2, 2, width=WIDTH, activation="relu")

        def model(x=None, n=None):
            net = pyro.module("g", g)
            with pyro.plate("data", x.shape[0] if x is not None else n):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.deterministic("x", net(z), event_dim=1)

        adam = gm.optim.Adam(LR, betas=BETAS)
        backend = gm.inference.Adversarial("gan", generator_loss="nonsaturating", optim=adam, critic_optim=adam)
        fit, seconds, first = timed_fit(model, x_np, backend, n_steps, batch_size=BATCH, seed=0, device="cpu")
        COMPILE["gmppl pyro: first chunk incl. setup (+ compile), s"] = round(first, 2)
        return _quality(np.asarray(fit.sample(2500, seed=1)), centres), seconds

    return [
        Case("torch plain loop", plain, steps, quality_name="high quality"),
        # gmppl builds torch's fused Adam for gm.optim.Adam: the same loop with it, for reference
        Case("torch plain loop, fused Adam", lambda n: plain(n, fused=True), steps, quality_name="high quality"),
        Case(
            "gmppl pyro",
            gmppl,
            steps,
            warmup=2 * TORCH_CHUNK,
            baseline="torch plain loop, fused Adam",
            quality_name="high quality",
        ),
    ]


# ---------------------------------------------------------------------- JAX
def _jax_cases(steps: int) -> list[Case]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.contrib.module import eqx_module

    import gmppl as gm
    from gmppl.models.nets import eqx_mlp

    x_np, centres = _ring()
    x = jnp.asarray(x_np)

    def leaky(v):  # noqa: ANN001, ANN202
        return jax.nn.leaky_relu(v, 0.2)

    def nets(key):  # noqa: ANN001, ANN202
        kg, kd = jax.random.split(key)
        g = eqx_mlp(2, 2, width=WIDTH, activation="relu", key=kg)
        d = eqx.nn.MLP(2, 1, WIDTH, 2, activation=leaky, key=kd)
        return g, d

    tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1])
    g0, d0 = nets(jax.random.PRNGKey(0))
    gp0, gs = eqx.partition(g0, eqx.is_inexact_array)
    dp0, ds = eqx.partition(d0, eqx.is_inexact_array)

    def gen(gp, z):  # noqa: ANN001, ANN202
        return jax.vmap(eqx.combine(gp, gs))(z)

    def disc(dp, v):  # noqa: ANN001, ANN202
        return jax.vmap(eqx.combine(dp, ds))(v)[:, 0]

    def update(state, key):  # noqa: ANN001, ANN202
        gp, dp, og, od, avg, t = state
        k1, k2 = jax.random.split(key)
        real = x[jax.random.randint(k1, (BATCH,), 0, x.shape[0])]
        z = jax.random.normal(k2, (BATCH, 2))

        def loss_d(dp, fake):  # noqa: ANN001, ANN202
            return jnp.mean(jax.nn.softplus(-disc(dp, real))) + jnp.mean(jax.nn.softplus(disc(dp, fake)))

        fake = gen(gp, z)
        gd = jax.grad(loss_d)(dp, jax.lax.stop_gradient(fake))
        upd, od = tx.update(gd, od, dp)
        dp = optax.apply_updates(dp, upd)
        gg = jax.grad(lambda gp: jnp.mean(jax.nn.softplus(-disc(dp, gen(gp, z)))))(gp)
        upd, og = tx.update(gg, og, gp)
        gp = optax.apply_updates(gp, upd)
        d = ema_decay(EMA, (t + 1).astype(jnp.float32))
        avg = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), avg, gp)
        return gp, dp, og, od, avg, t + 1

    step = jax.jit(update)

    @jax.jit
    def chunk(state, key):  # noqa: ANN001, ANN202
        return jax.lax.scan(lambda s, k: (update(s, k), None), state, jax.random.split(key, JAX_CHUNK))[0]

    def scanned(n_steps: int) -> float:
        state = (gp0, dp0, tx.init(gp0), tx.init(dp0), gp0, jnp.zeros((), jnp.int32))
        key = jax.random.PRNGKey(0)
        for _ in range(max(n_steps // JAX_CHUNK, 1)):
            key, k = jax.random.split(key)
            state = chunk(state, k)
        jax.block_until_ready(state)
        return _quality(np.asarray(gen(state[4], jax.random.normal(jax.random.PRNGKey(1), (2500, 2)))), centres)

    def plain(n_steps: int) -> float:
        state = (gp0, dp0, tx.init(gp0), tx.init(dp0), gp0, jnp.zeros((), jnp.int32))
        key = jax.random.PRNGKey(0)
        for _ in range(n_steps):
            key, k = jax.random.split(key)
            state = step(state, k)
        jax.block_until_ready(state)
        return _quality(np.asarray(gen(state[4], jax.random.normal(jax.random.PRNGKey(1), (2500, 2)))), centres)

    def gmppl(n_steps: int) -> float:
        def model(x=None, n=None):
            net = eqx_module("g", g0)
            with numpyro.plate("data", x.shape[0] if x is not None else n):
                z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
                numpyro.deterministic("x", jax.vmap(net)(z))

        adam = gm.optim.Adam(LR, betas=BETAS)
        backend = gm.inference.Adversarial(
            "gan", generator_loss="nonsaturating", critic=d0, optim=adam, critic_optim=adam
        )
        fit, seconds, first = timed_fit(model, x_np, backend, n_steps, batch_size=BATCH, seed=0)
        COMPILE["gmppl numpyro: first chunk incl. setup (+ compile), s"] = round(first, 2)
        return _quality(np.asarray(fit.sample(2500, seed=1)), centres), seconds

    return [
        Case("jax plain loop (jit per step)", plain, steps, quality_name="high quality"),
        Case("jax lax.scan loop (100 per call)", scanned, steps, warmup=JAX_CHUNK, quality_name="high quality"),
        Case(
            "gmppl numpyro",
            gmppl,
            steps,
            warmup=2 * JAX_CHUNK,
            baseline="jax lax.scan loop (100 per call)",
            quality_name="high quality",
        ),
    ]


def cases(quick: bool) -> list[Case]:
    steps = 2000 if quick else 20000
    return _torch_cases(steps) + _jax_cases(steps)


def targets(cases: list[Case]) -> str:
    """The targets as ratios of steady-state steps/s (>= 0.9 on both engines)."""
    rate = {c.name: c.result["steps_per_s"] for c in cases}
    text = (
        f"- gmppl pyro: {rate['gmppl pyro'] / rate['torch plain loop']:.2f}x the plain torch loop (target >= 0.9), "
        f"{rate['gmppl pyro'] / rate['torch plain loop, fused Adam']:.2f}x the same loop with fused Adam\n"
        f"- gmppl numpyro: {rate['gmppl numpyro'] / rate['jax plain loop (jit per step)']:.2f}x the jit-per-step loop "
        f"(target >= 0.9), {rate['gmppl numpyro'] / rate['jax lax.scan loop (100 per call)']:.2f}x the lax.scan loop"
    )
    print(text, flush=True)
    return text


if __name__ == "__main__":
    import sys

    from benchmarks.harness import run_cases

    all_cases = cases(quick="--quick" in sys.argv)
    run_cases(TITLE, all_cases, module="bench_gan", quick="--quick" in sys.argv)
    targets(all_cases)
    print(COMPILE)
