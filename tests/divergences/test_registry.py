"""``get``: names, aliases, instances, and the error for an unknown name."""

from __future__ import annotations

import pytest

import gmppl.divergences as gd
from gmppl.errors import UnknownName

ALIASES = {
    "kl": gd.KL, "forward_kl": gd.KL, "reverse_kl": gd.ReverseKL, "rkl": gd.ReverseKL,
    "js": gd.JensenShannon, "jensen_shannon": gd.JensenShannon, "pearson": gd.Pearson, "chi2": gd.Pearson,
    "neyman": gd.Neyman, "squared_hellinger": gd.SquaredHellinger, "hellinger": gd.SquaredHellinger,
    "jeffreys": gd.Jeffreys, "gan": gd.GAN, "total_variation": gd.TotalVariation, "tv": gd.TotalVariation,
    "w1": gd.Wasserstein1, "wasserstein": gd.Wasserstein1, "mmd": gd.MMD, "energy": gd.EnergyDistance,
}  # fmt: skip


@pytest.mark.parametrize("name, cls", ALIASES.items())
def test_aliases(name, cls):
    assert type(gd.get(name)) is cls
    assert type(gd.get(name.upper().replace("_", "-"))) is cls  # case- and dash-insensitive
    assert name in gd.available()


def test_instances_pass_through_and_classes_instantiate():
    w = gd.Wasserstein1(method="sliced", num_projections=8)
    assert gd.get(w) is w
    assert gd.get(gd.KL) == gd.KL()


def test_w1_is_not_an_f_divergence_and_the_family_is():
    assert isinstance(gd.get("w1"), gd.Wasserstein1) and not isinstance(gd.get("w1"), gd.FDivergence)
    for name in ["kl", "reverse_kl", "pearson", "neyman", "squared_hellinger", "jeffreys", "js", "gan", "tv"]:
        assert isinstance(gd.get(name), gd.FDivergence)


@pytest.mark.parametrize("bad", ["no-such-divergence", "", 3, None])
def test_unknown_name_lists_the_valid_ones(bad):
    with pytest.raises(UnknownName) as info:
        gd.get(bad)
    assert isinstance(info.value, ValueError)
    for name in ("kl", "js", "w1", "mmd", "energy"):
        assert name in str(info.value)
