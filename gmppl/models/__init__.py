"""Models: ``Pushforward``, flows, diffusion, guides, networks and a zoo, for Pyro and NumPyro."""

from gmppl.models import flows
from gmppl.models.continuous_flow import ContinuousFlow
from gmppl.models.diffusion import Diffusion
from gmppl.models.guides import AmortizedNormal
from gmppl.models.pushforward import Pushforward
from gmppl.models.score_nets import ScoreMLP, ScoreUNet

__all__ = ["AmortizedNormal", "ContinuousFlow", "Diffusion", "Pushforward", "flows", "ScoreMLP", "ScoreUNet"]
