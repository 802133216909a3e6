"""Small network builders shared by guides, critics and score networks, for both engines.

``torch_mlp`` returns an ``nn.Sequential``; ``eqx_mlp`` an ``equinox.nn.MLP`` acting on one
example (``jax.vmap`` it over a batch). Hidden widths are equal, as in ``eqx.nn.MLP``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

#: Negative slope of ``activation="leaky_relu"`` on both engines: 0.2, the GAN critics' value (DCGAN);
#: torch's and JAX's own defaults (0.01) differ from it.
LEAKY_SLOPE = 0.2

_TORCH_ACT = {
    "relu": "ReLU",
    "silu": "SiLU",
    "softplus": "Softplus",
    "tanh": "Tanh",
    "leaky_relu": "LeakyReLU",
    "elu": "ELU",
    "gelu": "GELU",
}


def torch_mlp(in_dim: int, out_dim: int, *, width: int = 128, depth: int = 2, activation: str = "silu") -> Any:
    """``depth`` hidden layers of ``width`` units: ``Linear -> act -> ... -> Linear``."""
    import torch.nn as nn

    act = getattr(nn, _TORCH_ACT[activation])
    if activation == "leaky_relu":
        act = functools.partial(nn.LeakyReLU, LEAKY_SLOPE)
    layers: list[Any] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def eqx_mlp(in_dim: int, out_dim: int, *, key: Any, width: int = 128, depth: int = 2, activation: str = "silu") -> Any:
    """An ``equinox.nn.MLP`` with ``depth`` hidden layers of ``width`` units (one example in, one out)."""
    import equinox as eqx
    import jax

    acts: dict[str, Callable[..., Any]] = {
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "softplus": jax.nn.softplus,
        "tanh": jax.numpy.tanh,
        "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=LEAKY_SLOPE),
        "elu": jax.nn.elu,
        "gelu": jax.nn.gelu,
    }
    return eqx.nn.MLP(in_dim, out_dim, width, depth, activation=acts[activation], key=key)
