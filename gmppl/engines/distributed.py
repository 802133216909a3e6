"""Data-parallel Pyro fits under ``torchrun``: one process per device, each on its slice of every batch.

``torchrun --nproc-per-node=N script.py`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``gm.fit`` then
joins the ``torch.distributed`` group (gloo on CPU, NCCL on CUDA, one GPU per rank) with no change to
the script. The semantics:

- ``batch_size`` is the global batch ``B``; every rank walks the same global minibatch sequence (one
  permutation generator, seeded alike) and takes rows ``[r B/N, (r+1) B/N)`` of each batch.
- Every optimiser step first replaces each gradient by its mean over ranks (one all-reduce per
  optimiser, before any clipping): a backend's loss is a mean over its batch, so the mean of the
  ranks' gradients is the gradient on the global batch and N ranks give the one-process parameters up
  to reduction order. A mean, never a sum: prior and global-latent terms count once. A gradient
  penalty or sliced score term is a mean of per-example terms, so averaging is exact for it too.
- Parameters start as rank 0's (broadcast after set-up, as ``DistributedDataParallel`` does); the
  per-step noise (reparameterised draws, diffusion times, GAN latents) comes from a per-rank
  torch generator seeded by ``(seed, rank)``.
- Only rank 0 shows progress and writes checkpoints and saves; a checkpoint keeps every rank's random
  state.

The program's modules are called from inside the Pyro program, not through a wrapper, so the
gradients are reduced where the optimiser steps rather than by ``DistributedDataParallel``'s hooks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from gmppl.errors import DeviceError


@dataclass(frozen=True)
class World:
    """This process's place in a ``torch.distributed`` group."""

    rank: int
    size: int
    local_rank: int

    def slice(self, b: int) -> slice:
        """Rows of a global batch of ``b`` that this rank takes."""
        per = b // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def seed(self, seed: int) -> int:
        """Rank ``r``'s seed for its noise: ``seed`` itself on rank 0, a hash of ``(seed, r)`` elsewhere."""
        return int(seed) if self.rank == 0 else int(np.random.SeedSequence([int(seed), self.rank]).generate_state(1)[0])


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def device_for(device: Any) -> Any:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``None`` (when CUDA is there) or ``"cuda"``."""
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        return f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if str(device) == "cuda":
        return f"cuda:{local}"
    return device


def join(device: Any) -> World:
    """Join (or use the caller's) ``torch.distributed`` process group for a fit on ``device``."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise DeviceError("WORLD_SIZE > 1 but this torch has no torch.distributed; run one process.")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL's collectives and all_gather_object use the current device
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    elif dist.get_backend() == "nccl" and dev.type != "cuda":
        raise DeviceError(
            f"the process group uses NCCL, which needs CUDA tensors, but the fit runs on {dev}; fit with "
            "device='cuda' (one GPU per rank) or initialise the group with backend='gloo'."
        )
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def current() -> World | None:
    """The group this process has joined, if any."""
    if not launched():  # spares importing torch in a process on its own (a NumPyro fit's)
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_writer(engine: str | None = None) -> bool:
    """Whether this process writes files: rank 0 under torchrun; for a NumPyro fit (``engine="numpyro"``), JAX's
    process 0 (several hosts joined by ``jax.distributed.initialize()`` each hold the same fit); else yes."""
    world = current()
    if world is not None and world.rank != 0:
        return False
    if engine == "numpyro":
        import jax

        return jax.process_index() == 0
    return True


def _comm_device() -> Any:
    """Where a collective's own tensors live: the current GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def average_gradients(optimizer: Any) -> None:
    """Make every rank's ``optimizer`` step on the mean gradient: one flattened all-reduce of all grads, run
    first among the optimiser's step pre-hooks (so clipping sees the global gradient)."""
    import torch
    import torch.distributed as dist

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        views = flat.split([g.numel() for g in grads])
        torch._foreach_copy_(grads, [v.view_as(g) for g, v in zip(grads, views, strict=True)])

    handle = optimizer.register_step_pre_hook(hook)
    optimizer._optimizer_step_pre_hooks.move_to_end(handle.id, last=False)


def broadcast(tensors: list) -> None:
    """Rank 0's values into ``tensors`` on every rank."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def mean(values: np.ndarray) -> np.ndarray:
    """The mean over ranks of a float array (the loss history of each rank's slice)."""
    import torch
    import torch.distributed as dist

    t = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64), device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).cpu().numpy()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer, so all stop at one step)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(values: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Every rank's ``values`` (small arrays: random states), on every rank, in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, [np.asarray(v) for v in values])
    return out
