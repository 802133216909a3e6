"""Critics for `Adversarial`: the network ``V_w`` whose output ``T_w = activation(V_w)`` enters the bound.

The default critic is an MLP sized from the data: ``d = prod(x_shape)`` inputs, two hidden
layers of ``width = clip(2^ceil(log2(2 d)), 128, 512)`` leaky-ReLU units (slope 0.2 on both engines), one output
(so 2-D data gets the usual 2x128 GAN critic). ``critic="conv"`` gives a small strided conv
net for image-shaped data (``(H, W)`` or ``(C, H, W)``). A user critic is accepted as is: a
``torch.nn.Module`` on batches, or on JAX an Equinox module (called per example and vmapped,
or on the batch when a single example does not go through) or a Flax Linen module.

On JAX a critic is split into ``(params, apply)``: ``params`` (a pytree of arrays) lives in
``program.params`` under :data:`CRITIC`, ``apply(params, x) -> (batch,)`` is a pure function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np

#: The reserved name of the critic's parameters: a Pyro module name / a key of ``program.params``.
CRITIC = "_gmppl_critic"


def critic_width(x_shape: tuple[int, ...]) -> int:
    """Hidden width of the default MLP critic: ``clip(2^ceil(log2(2 d)), 128, 512)``."""
    d = max(int(np.prod(x_shape)), 1)
    return int(min(512, max(128, 2 ** math.ceil(math.log2(2 * d)))))


def _image_shape(x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(x_shape) == 2:
        return (1, *x_shape)
    if len(x_shape) == 3:
        return x_shape
    from gmppl.errors import BackendError

    raise BackendError(
        f"critic='conv' needs image-shaped examples (H, W) or (C, H, W); these are {x_shape}. Use critic='mlp'."
    )


# ---------------------------------------------------------------------- torch
def torch_critic(spec: Any, x_shape: tuple[int, ...], *, seed: int) -> Any:
    """A torch critic: a copy of the user's module, or a default one (``spec`` None/"mlp"/"conv")."""
    import torch
    import torch.nn as nn

    from gmppl.models.nets import torch_mlp

    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)  # one critic per chain, never shared between fits
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec in (None, "mlp"):
            d = int(np.prod(x_shape))
            return nn.Sequential(nn.Flatten(), torch_mlp(d, 1, width=critic_width(x_shape), activation="leaky_relu"))
        if spec == "conv":
            c, h, w = _image_shape(x_shape)
            body = nn.Sequential(
                nn.Unflatten(1, (c, h, w)),
                nn.Conv2d(c, 32, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.LeakyReLU(0.2),
                nn.Flatten(),
            )
            with torch.no_grad():
                feat = body(torch.zeros(1, c * h * w)).shape[1]
            return nn.Sequential(nn.Flatten(), body, nn.Linear(feat, 1))
    raise _bad_spec(spec)


def torch_spectral_norm(critic: Any) -> Any:
    """Spectral normalisation (Miyato et al. 2018) of every linear/conv layer: each ``W / sigma_max(W)``."""
    import torch.nn as nn
    from torch.nn.utils.parametrizations import spectral_norm

    for name, layer in list(critic.named_modules()):
        if isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d) and not name.endswith("parametrizations"):
            spectral_norm(layer)
    return critic


# ---------------------------------------------------------------------- JAX
def _leaky(x: Any) -> Any:
    import jax

    from gmppl.models.nets import LEAKY_SLOPE

    return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def _flat_mlp_cls() -> type:
    import equinox as eqx

    class FlatMLP(eqx.Module):
        """The default MLP critic on one example: ``mlp(x.reshape(-1))``."""

        mlp: eqx.nn.MLP

        def __call__(self, x: Any) -> Any:
            return self.mlp(x.reshape(-1))[0]

    return FlatMLP


def _conv_cls() -> type:
    import equinox as eqx

    class ConvCritic(eqx.Module):
        """Two strided 3x3 convolutions and a linear read-out, on one ``(C, H, W)`` example."""

        shape: tuple[int, int, int] = eqx.field(static=True)
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        out: eqx.nn.Linear

        def __call__(self, x: Any) -> Any:
            h = _leaky(self.c1(x.reshape(self.shape)))
            h = _leaky(self.c2(h))
            return self.out(h.reshape(-1))[0]

    return ConvCritic


_CLASSES: dict[str, type] = {}


def _cls(name: str) -> type:
    if name not in _CLASSES:
        _CLASSES[name] = _flat_mlp_cls() if name == "mlp" else _conv_cls()
    return _CLASSES[name]


def jax_critic(spec: Any, example: Any, *, key: Any) -> tuple[Any, Callable[[Any, Any], Any]]:
    """``(params, apply)`` of a JAX critic; ``apply(params, x)`` maps a batch to shape ``(batch,)``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x_shape = tuple(example.shape[1:])
    if spec in (None, "mlp"):
        d = int(np.prod(x_shape))
        module = _cls("mlp")(eqx.nn.MLP(d, 1, critic_width(x_shape), 2, activation=_leaky, key=key))
    elif spec == "conv":
        c, h, w = _image_shape(x_shape)
        k1, k2, k3 = jax.random.split(key, 3)
        c1 = eqx.nn.Conv2d(c, 32, 3, stride=2, padding=1, key=k1)
        c2 = eqx.nn.Conv2d(32, 64, 3, stride=2, padding=1, key=k2)
        feat = int(np.prod(jax.eval_shape(lambda z: c2(c1(z)), jnp.zeros((c, h, w))).shape))
        module = _cls("conv")((c, h, w), c1, c2, eqx.nn.Linear(feat, 1, key=k3))
    elif _is_flax(spec):
        params = spec.init(key, jnp.asarray(example))

        def apply_flax(p: Any, x: Any) -> Any:
            return spec.apply(p, x).reshape(x.shape[0])

        return params, apply_flax
    elif isinstance(spec, eqx.Module) or callable(spec):
        module = spec
    else:
        raise _bad_spec(spec)

    params, static = eqx.partition(module, eqx.is_inexact_array)
    per_example = _runs_per_example(module, example)

    def apply(p: Any, x: Any) -> Any:
        net = eqx.combine(p, static)
        out = jax.vmap(net)(x) if per_example else net(x)
        return out.reshape(x.shape[0])

    return params, apply


def _runs_per_example(module: Any, example: Any) -> bool:
    """A critic is called per example (vmapped) when one example goes through it to a scalar."""
    import jax
    import jax.numpy as jnp

    from gmppl.errors import BackendError

    one = jax.ShapeDtypeStruct(example.shape[1:], jnp.asarray(example).dtype)
    try:
        out = jax.eval_shape(module, one)
        if int(np.prod(out.shape)) == 1:
            return True
    except Exception:  # noqa: BLE001 - a batched critic rejects a single example
        pass
    batch = jax.ShapeDtypeStruct(example.shape, jnp.asarray(example).dtype)
    try:
        out = jax.eval_shape(module, batch)
    except Exception as e:
        raise BackendError(
            f"the critic {type(module).__name__} accepts neither one example of shape {example.shape[1:]} "
            f"nor a batch of shape {example.shape}: {type(e).__name__}: {e}"
        ) from e
    if int(np.prod(out.shape)) != example.shape[0]:
        raise BackendError(f"the critic must return one number per example; it returned shape {out.shape}.")
    return False


def _is_flax(spec: Any) -> bool:
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover - flax is optional
        return False
    return isinstance(spec, nn.Module)


def spectral_normalise(params: Any, iterations: int = 50) -> Any:
    """Every weight matrix (``ndim >= 2``, reshaped to ``(out, -1)``) divided by its top singular value.

    ``sigma`` by power iteration from a fixed start, with the iteration vectors held constant
    under differentiation, as in Miyato et al. (2018).
    """
    import jax
    import jax.numpy as jnp

    def norm(w: Any) -> Any:
        if not hasattr(w, "ndim") or w.ndim < 2:
            return w
        m = w.reshape(w.shape[0], -1)
        v = jnp.ones(m.shape[1], m.dtype) / math.sqrt(m.shape[1])

        def body(_: Any, v: Any) -> Any:
            u = m @ v
            u = u / (jnp.linalg.norm(u) + 1e-12)
            v = m.T @ u
            return v / (jnp.linalg.norm(v) + 1e-12)

        v = jax.lax.stop_gradient(jax.lax.fori_loop(0, iterations, body, v))
        u = jax.lax.stop_gradient(m @ v / (jnp.linalg.norm(m @ v) + 1e-12))
        return w / (u @ m @ v)

    return jax.tree.map(norm, params)


def _bad_spec(spec: Any) -> Exception:
    from gmppl.errors import BackendError

    return BackendError(
        f"critic={spec!r} is not a critic: pass None or 'mlp' (default MLP), 'conv' (images), "
        "a torch.nn.Module (Pyro), or an Equinox/Flax module (NumPyro)."
    )
