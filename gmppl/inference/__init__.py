"""Inference backends: which divergence between data and model to minimise, and how."""

from gmppl.inference.adversarial import Adversarial
from gmppl.inference.base import Backend
from gmppl.inference.elbo import ELBO
from gmppl.inference.flow_matching import FlowMatching
from gmppl.inference.likelihood import Likelihood
from gmppl.inference.nuts import NUTS
from gmppl.inference.score import Score

__all__ = ["Adversarial", "Backend", "ELBO", "FlowMatching", "Likelihood", "NUTS", "Score"]
