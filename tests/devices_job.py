"""Data-parallel JAX fits on 2 forced host devices, run as its own process by ``test_devices.py`` (the device
count must be set before JAX starts)."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import gmppl as gm  # noqa: E402
from gmppl.models import zoo  # noqa: E402


def main() -> dict:
    import jax

    x = gm.datasets.moons(512)
    out: dict = {"devices": len(jax.devices())}
    for name, make, backend, steps in [
        ("likelihood", lambda: zoo.ppca(2, 1, engine="numpyro"), gm.inference.Likelihood, 100),
        ("elbo", lambda: zoo.vae(2, latent_dim=2, engine="numpyro"), gm.inference.ELBO, 100),
        # a two-player game amplifies rounding: compare early, before the players' feedback does
        ("adversarial", lambda: zoo.gan(2, latent_dim=2, engine="numpyro"), gm.inference.Adversarial, 10),
    ]:
        fits = [
            gm.fit(make(), x, backend(), steps=steps, batch_size=64, seed=0, devices=d, progress=False) for d in (1, 2)
        ]
        one, two = ({k: np.asarray(v) for k, v in f.params.items()} for f in fits)
        out[name] = max(float(np.max(np.abs(one[k] - two[k]) / (1e-3 + np.abs(one[k])))) for k in one)
    errors = []
    for kw in ({"devices": 3}, {"devices": 2, "batch_size": 63}):
        try:
            gm.fit(zoo.ppca(2, 1, engine="numpyro"), x, steps=1, progress=False, **{"batch_size": 64, **kw})
        except gm.DeviceError as e:
            errors.append(str(e))
    out["errors"] = errors
    return out


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
