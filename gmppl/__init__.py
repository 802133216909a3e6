"""gmppl: probabilistic programming for deep generative models.

Write a generative model as a Pyro or NumPyro program, pick an inference backend (exact
likelihood, ELBO, adversarial f-divergence/Wasserstein, score matching), fit it, and get
samples, likelihoods, latent posteriors and uncertainty as an ArviZ ``DataTree``::

    import gmppl as gm
    fit = gm.fit(model, data, gm.inference.Likelihood(), steps=2000)
"""

from gmppl import datasets, divergences, inference, metrics, models, optim, uq
from gmppl.compare import compare
from gmppl.errors import (
    BackendError,
    CheckpointError,
    DataError,
    DeviceError,
    GmpplError,
    ModelError,
    NotSupported,
    TrainingError,
    UnknownName,
)
from gmppl.fit import fit
from gmppl.result import Fit, load

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CheckpointError",
    "DataError",
    "DeviceError",
    "Fit",
    "GmpplError",
    "ModelError",
    "NotSupported",
    "TrainingError",
    "UnknownName",
    "compare",
    "datasets",
    "divergences",
    "fit",
    "inference",
    "load",
    "metrics",
    "models",
    "optim",
    "uq",
]
