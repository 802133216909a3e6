"""Models: ``Pushforward``, flows, diffusion, guides, networks and a zoo, for Pyro and NumPyro."""

from gmppl.models.pushforward import Pushforward

__all__ = ["Pushforward"]
