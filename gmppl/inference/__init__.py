"""Inference backends: which divergence between data and model to minimise, and how."""

from gmppl.inference.base import Backend
from gmppl.inference.likelihood import Likelihood

__all__ = ["Backend", "Likelihood"]
