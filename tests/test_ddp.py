"""Data-parallel Pyro fits under ``torchrun``: two CPU processes (gloo) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ``ddp_job.py`` on two ranks once for the module's tests."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(HERE / "ddp_job.py"),
    ]
    res = subprocess.run([*cmd, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_two_processes_give_the_one_process_flow(ranks: Path) -> None:
    """A flow by Likelihood, 300 steps, global batch 512: each rank fits on its 256 rows of every batch and
    steps on the mean gradient, which is the global batch's; no noise, so the parameters are the
    one-process fit's up to float32 reduction order."""
    sys.path.insert(0, str(HERE))
    from ddp_job import case

    one = case("likelihood").params
    for rank in (0, 1):
        two = _load(ranks / f"likelihood-rank{rank}.npz")
        assert two.keys() == one.keys()
        for name, value in one.items():
            np.testing.assert_allclose(two[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ["elbo", "adversarial", "score"])
def test_every_backend_keeps_the_ranks_in_step(name: str, ranks: Path) -> None:
    """With per-rank noise, the ranks step on the same averaged gradients: their parameters stay bitwise
    equal (a rank that stepped on its own gradient would drift apart), and they are finite."""
    a, b = _load(ranks / f"{name}-rank0.npz"), _load(ranks / f"{name}-rank1.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert np.isfinite(a[k]).all(), k


def test_a_resumed_two_process_fit_is_the_whole_one_and_rank_0_alone_writes(ranks: Path) -> None:
    assert (ranks / "resume-rank0.txt").read_text() == "True" == (ranks / "resume-rank1.txt").read_text()
    assert (ranks / "saved" / "weights.safetensors").is_file()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(ranks: Path) -> None:
    for rank in (0, 1):
        assert "batch_size=63 does not split over 2 processes" in (ranks / f"refused-rank{rank}.txt").read_text()


def test_gmppl_fit_under_torchrun_saves_once(tmp_path: Path) -> None:
    """`torchrun -m gmppl.cli fit`: both ranks fit, rank 0 saves (and says so), the saved fit loads."""
    import gmppl as gm
    from gmppl.cli import load_model

    (tmp_path / "m.py").write_text(
        "import pyro, pyro.distributions as dist, torch\n"
        "def gauss(x=None, n=None):\n"
        "    mu = pyro.param('mu', torch.zeros(2))\n"
        "    with pyro.plate('data', x.shape[0] if x is not None else n):\n"
        "        pyro.sample('x', dist.Normal(mu, 1.0).to_event(1), obs=x)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "gmppl.cli"]
    args = ["fit", f"{tmp_path}/m.py:gauss", "--steps", "50", "--batch-size", "128", "--out", str(tmp_path / "run")]
    res = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("saved Fit(") == 1, res.stdout
    fit = gm.load(tmp_path / "run", load_model(f"{tmp_path}/m.py:gauss"))
    assert fit.history["loss"].shape == (50,) and np.isfinite(fit.params["mu"]).all()
