"""``get(name)``: a divergence by name or alias (case- and dash-insensitive)."""

from __future__ import annotations

from ..errors import UnknownName
from .fdivergences import (
    GAN,
    KL,
    FDivergence,
    Jeffreys,
    JensenShannon,
    Neyman,
    Pearson,
    ReverseKL,
    SquaredHellinger,
    TotalVariation,
)
from .samples import MMD, EnergyDistance, Wasserstein1

__all__ = ["available", "get"]

Divergence = FDivergence | Wasserstein1 | MMD | EnergyDistance

_ALIASES: dict[str, type] = {
    "kl": KL,
    "forward_kl": KL,
    "reverse_kl": ReverseKL,
    "rkl": ReverseKL,
    "pearson": Pearson,
    "chi2": Pearson,
    "neyman": Neyman,
    "squared_hellinger": SquaredHellinger,
    "hellinger": SquaredHellinger,
    "jeffreys": Jeffreys,
    "js": JensenShannon,
    "jensen_shannon": JensenShannon,
    "gan": GAN,
    "total_variation": TotalVariation,
    "tv": TotalVariation,
    "w1": Wasserstein1,
    "wasserstein": Wasserstein1,
    "wasserstein1": Wasserstein1,
    "mmd": MMD,
    "energy": EnergyDistance,
    "energy_distance": EnergyDistance,
}
_CLASSES = tuple(dict.fromkeys(_ALIASES.values()))


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def available() -> tuple[str, ...]:
    """Every accepted name and alias."""
    return tuple(_ALIASES)


def get(name: str | Divergence | type) -> Divergence:
    """The divergence called ``name`` with default settings; an instance is returned as is.

    >>> get("Jensen-Shannon")
    JensenShannon()
    """
    if isinstance(name, (FDivergence, Wasserstein1, MMD, EnergyDistance)):
        return name
    if isinstance(name, type) and name in _CLASSES:
        return name()
    if isinstance(name, str):
        cls = _ALIASES.get(_normalise(name))
        if cls is not None:
            return cls()
    raise UnknownName(f"unknown divergence {name!r}; valid names (case- and dash-insensitive): {', '.join(_ALIASES)}")
