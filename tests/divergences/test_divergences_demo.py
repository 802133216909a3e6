"""The demo runs, writes its PNG, and its table agrees with itself (quadrature vs Monte Carlo)."""

from __future__ import annotations

import re

from gmppl.divergences import demo


def test_demo_writes_table_and_plot(tmp_path, capsys):
    report = demo.main(tmp_path, num_samples=20_000)
    assert (tmp_path / "divergences.png").stat().st_size > 10_000
    assert report in capsys.readouterr().out
    for name in [
        "KL",
        "ReverseKL",
        "Pearson",
        "Neyman",
        "SquaredHellinger",
        "Jeffreys",
        "JensenShannon",
        "GAN",
        "TotalVariation",
    ]:
        assert f"| {name} |" in report
    assert "| Neyman | inf |" in report  # Q's tails are heavier than P's
    row = re.search(r"\| KL \| ([0-9.]+) \| ([0-9.]+) ± ([0-9.]+) \|", report)
    quad, mc, se = map(float, row.groups())
    assert abs(quad - mc) < 4 * se
    assert "| KL | 0.1837868974 | 0.1837868974 |" in report  # the Bernoulli worked example (docs/design.md)
