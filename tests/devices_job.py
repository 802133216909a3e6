"""Data-parallel JAX fits on 2 forced host devices, run as its own process by ``test_devices.py`` (the device
count must be set before JAX starts)."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import gmppl as gm  # noqa: E402
from gmppl.engines.numpyro import JaxLoop  # noqa: E402
from gmppl.models import zoo  # noqa: E402


def _rel(a: gm.Fit, b: gm.Fit) -> float:
    """The largest relative difference between two fits' parameters."""
    one, two = ({k: np.asarray(v) for k, v in f.params.items()} for f in (a, b))
    return max(float(np.max(np.abs(one[k] - two[k]) / (1e-3 + np.abs(one[k])))) for k in one)


def main() -> dict:
    import jax

    x = gm.datasets.moons(512)
    out: dict = {"devices": len(jax.devices())}
    for name, make, backend, steps in [
        ("likelihood", lambda: zoo.ppca(2, 1, engine="numpyro"), gm.inference.Likelihood, 100),
        ("elbo", lambda: zoo.vae(2, latent_dim=2, engine="numpyro"), gm.inference.ELBO, 100),
        # a two-player game amplifies rounding: compare early, before the players' feedback does
        ("adversarial", lambda: zoo.gan(2, latent_dim=2, engine="numpyro"), gm.inference.Adversarial, 10),
        ("score", lambda: zoo.diffusion(2, width=32, engine="numpyro"), gm.inference.Score, 50),
    ]:
        fits = [
            gm.fit(make(), x, backend(), steps=steps, batch_size=64, seed=0, devices=d, progress=False) for d in (1, 2)
        ]
        out[name] = _rel(*fits)
        # the noise (ELBO's reparameterised draws, the generator's latents) is drawn for the whole batch in one
        # program, so step 0's loss is the same estimate on both layouts, up to the batch mean's rounding
        l1, l2 = (float(f.history["loss"][0]) for f in fits)
        out[f"{name}_loss0"] = abs(l1 - l2) / (1e-6 + abs(l1))

    # an ensemble spread over the devices: one chain per device, each on its full batch
    shardings: list = []
    run_chunk = JaxLoop.run_chunk

    def spy(self: JaxLoop, state: tuple, k: int, start: int = 0) -> tuple:
        carry, metrics = run_chunk(self, state, k, start)
        shardings.append({len(a.sharding.device_set) for a in jax.tree.leaves(carry)})
        return carry, metrics

    JaxLoop.run_chunk = spy  # type: ignore[method-assign]
    kw = {"steps": 100, "batch_size": 64, "seed": 0, "chains": 2, "progress": False}

    def vae(**fit_kw: object) -> gm.Fit:
        return gm.fit(zoo.vae(2, latent_dim=2, engine="numpyro"), x, gm.inference.ELBO(), **{**kw, **fit_kw})

    ens = {d: vae(devices=d) for d in (1, 2)}
    JaxLoop.run_chunk = run_chunk  # type: ignore[method-assign]
    out["chains"] = _rel(ens[1], ens[2])
    out["chains_state_devices"] = sorted(set().union(*shardings[len(shardings) // 2 :]))
    out["chains_sample"] = list(np.shape(ens[2].sample(3)))
    # checkpoint/resume with the state sharded over the chains: stopped at step 40, resumed on 2 devices and on 1
    with tempfile.TemporaryDirectory() as d:
        resumed = {}
        for devices in (2, 1):
            ck = Path(d) / str(devices)
            vae(devices=2, steps=40, checkpoint=ck, checkpoint_every=20)
            resumed[devices] = vae(devices=devices, checkpoint=ck, checkpoint_every=20, resume=True)
        out["resume_bitwise"] = all(
            np.array_equal(np.asarray(resumed[2].params[k]), np.asarray(ens[2].params[k])) for k in ens[2].params
        )
        out["resume"] = _rel(ens[2], resumed[2])
        out["resume_on_one"] = _rel(ens[2], resumed[1])

    errors = []
    for bad in (
        {"devices": 3},
        {"devices": 2, "batch_size": 63},
        {"devices": 2, "chains": 3},
        {"devices": 2, "backend": gm.inference.NUTS()},
    ):
        try:
            gm.fit(zoo.ppca(2, 1, engine="numpyro"), x, steps=1, progress=False, **{"batch_size": 64, **bad})
        except gm.DeviceError as e:
            errors.append(str(e))
    out["errors"] = errors
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
