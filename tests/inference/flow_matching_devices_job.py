"""``FlowMatching(coupling="minibatch_ot")`` on 2 forced host devices, run as its own process by
``test_flow_matching.py`` (the device count must be set before JAX starts)."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

import gmppl as gm  # noqa: E402


def main() -> dict:
    import jax
    import numpyro
    from numpyro.contrib.module import eqx_module

    v = gm.models.ScoreMLP(2, width=16, depth=2, key=jax.random.PRNGKey(0))

    def model(x=None, n=None):  # noqa: ANN001, ANN202
        net = eqx_module("velocity", v)
        with numpyro.plate("data", x.shape[0] if x is not None else n):
            numpyro.sample("x", gm.models.ContinuousFlow(net, solver="euler", steps=2), obs=x)

    x = gm.datasets.moons(256)
    backend = gm.inference.FlowMatching(coupling="minibatch_ot")
    fits = [gm.fit(model, x, backend, steps=10, batch_size=64, devices=d, progress=False) for d in (1, 2)]
    one, two = ({k: np.asarray(p) for k, p in f.params.items()} for f in fits)
    gap = max(float(np.max(np.abs(one[k] - two[k]) / (1e-3 + np.abs(one[k])))) for k in one)
    return {"devices": len(jax.devices()), "gap": gap}


if __name__ == "__main__":
    json.dump(main(), sys.stdout)
