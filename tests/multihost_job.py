"""One process of a NumPyro fit across hosts, run by ``test_devices.py``: two processes on this machine, one CPU
device each, joined by ``jax.distributed.initialize`` (process id -1: the one-process reference, one device).

argv: process id, coordinator port, output directory. Each process writes ``params<id>.json`` itself (the test
reads them); gmppl's own writes (checkpoints, ``Fit.save``) go to ``<out>/p<id>/``, where only process 0's appear.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np


def main(i: int, port: str, out: Path) -> None:
    if i >= 0:
        jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=i)
    import gmppl as gm
    from gmppl.models import zoo

    x = gm.datasets.moons(512)
    mine = out / f"p{i}"
    res: dict = {"devices": len(jax.devices()), "local": len(jax.local_devices())}
    for name, chains in (("batch", 1), ("chains", 2)):  # one chain: its batch split; two: one chain per process
        kw: dict = {"steps": 60, "batch_size": 64, "seed": 0, "chains": chains, "progress": False}
        if i >= 0:
            kw.update(devices=jax.devices(), checkpoint=mine / f"ck-{name}", checkpoint_every=30)
        fit = gm.fit(zoo.ppca(2, 1, engine="numpyro"), x, gm.inference.Likelihood(), **kw)
        fit.save(mine / f"saved-{name}")
        res[name] = {k: np.asarray(v).tolist() for k, v in fit.params.items()}
        res[f"{name}_sample"] = list(np.shape(fit.sample(4)))
    (out / f"params{i}.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
