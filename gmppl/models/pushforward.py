"""``Pushforward(prior, g)``: the law of ``g(z)``, ``z ~ prior`` — ``P_theta = g_theta # N(0, I)``.

The model family of ``docs/design.md`` ("Divergences and latent variables"): a latent from a simple
prior pushed through a network.

With an invertible ``g`` (a torch/Pyro ``Transform`` or ``TransformModule``, a NumPyro
``Transform``, or a gmppl flow) it is a ``TransformedDistribution`` and has a density by change of
variables, ``log p(x) = log p_z(g^{-1}(x)) + log |det J_{g^{-1}}(x)|``. Otherwise it only samples
(reparameterised, so gradients reach ``g``), and ``log_prob`` raises ``gm.NotSupported``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from gmppl.errors import NotSupported

_NO_DENSITY = (
    "Pushforward(prior, g) with a non-invertible g has no density (an implicit model); fit it with "
    "gm.inference.Adversarial, or make g invertible (a flow) to use Likelihood/Score."
)


def _is_torch_dist(d: Any) -> bool:
    import torch

    return isinstance(d, torch.distributions.Distribution)


def Pushforward(prior: Any, g: Any) -> Any:  # noqa: N802 - a distribution constructor
    """The distribution of ``g(z)`` with ``z ~ prior``, for a torch/Pyro or a NumPyro ``prior``.

    Example::

        flow = pyro.distributions.transforms.spline_coupling(2)
        pyro.sample("x", gm.models.Pushforward(dist.Normal(torch.zeros(2), 1).to_event(1), flow), obs=x)
    """
    if hasattr(g, "gmppl_transform"):
        g = g.gmppl_transform()
    if _is_torch_dist(prior):
        import pyro.distributions as pdist
        import torch

        transforms = g if isinstance(g, list | tuple) else [g]
        if all(isinstance(t, torch.distributions.Transform) for t in transforms):
            return pdist.TransformedDistribution(prior, list(transforms))
        return _torch_implicit()(prior, g)
    import numpyro.distributions as ndist
    from numpyro.distributions.transforms import Transform

    transforms = g if isinstance(g, list | tuple) else [g]
    if all(isinstance(t, Transform) for t in transforms):
        return ndist.TransformedDistribution(prior, list(transforms))
    if not isinstance(prior, ndist.Distribution):
        raise TypeError(f"prior must be a torch/Pyro or NumPyro distribution, not {type(prior).__name__}.")
    return _numpyro_implicit()(prior, g)


@functools.cache
def _torch_implicit() -> type:
    import pyro.distributions as pdist
    import torch

    class TorchPushforward(pdist.TorchDistribution):
        """``g(z)``, ``z ~ prior`` for a non-invertible ``g``: reparameterised samples, no density."""

        arg_constraints: dict = {}
        has_rsample = True
        gmppl_has_log_prob = False

        def __init__(self, prior: Any, g: Callable, event_shape: Any = None, validate_args: Any = None):
            self.prior, self.g = prior, g
            if event_shape is None:
                with torch.no_grad():
                    out = g(prior.sample((1,)))
                event_shape = out.shape[1 + len(prior.batch_shape) :]
            super().__init__(prior.batch_shape, torch.Size(event_shape), validate_args=False)

        def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
            return TorchPushforward(self.prior.expand(batch_shape), self.g, self.event_shape)

        def rsample(self, sample_shape: Any = torch.Size()) -> Any:
            return self.g(self.prior.rsample(sample_shape))

        def sample(self, sample_shape: Any = torch.Size()) -> Any:
            with torch.no_grad():
                return self.rsample(sample_shape)

        def log_prob(self, value: Any) -> Any:
            raise NotSupported(_NO_DENSITY)

    return TorchPushforward


@functools.cache
def _numpyro_implicit() -> type:
    import jax
    import numpyro.distributions as ndist
    from numpyro.distributions import constraints

    class NumPyroPushforward(ndist.Distribution):
        """``g(z)``, ``z ~ prior`` for a non-invertible ``g``: reparameterised samples, no density."""

        arg_constraints: dict = {}
        support = constraints.real_vector
        reparametrized_params: list = []
        has_rsample = True
        gmppl_has_log_prob = False

        def __init__(self, prior: Any, g: Callable, event_shape: Any = None, validate_args: Any = None):
            self.prior, self.g = prior, g
            if event_shape is None:
                z = jax.eval_shape(lambda k: prior.sample(k, (1,)), jax.random.PRNGKey(0))
                out = jax.eval_shape(g, z)
                event_shape = out.shape[1 + len(prior.batch_shape) :]
            super().__init__(prior.batch_shape, tuple(event_shape), validate_args=False)

        def expand(self, batch_shape: Any) -> Any:
            return NumPyroPushforward(self.prior.expand(batch_shape), self.g, self.event_shape)

        def sample(self, key: Any, sample_shape: tuple = ()) -> Any:
            return self.g(self.prior.sample(key, sample_shape))

        def rsample(self, key: Any, sample_shape: tuple = ()) -> Any:
            return self.sample(key, sample_shape)

        def log_prob(self, value: Any) -> Any:
            raise NotSupported(_NO_DENSITY)

    return NumPyroPushforward
