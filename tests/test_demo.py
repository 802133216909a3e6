"""``gmppl demo --quick``: every section runs on both kinds of model and writes its report and files."""

from __future__ import annotations

from typer.testing import CliRunner

from gmppl.cli import app


def test_quick_demo_writes_report_figures_and_fits(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = (tmp_path / "report.md").read_text()
    for name in (
        "flow / Likelihood",
        "flow / Adversarial(js)",
        "flow / Adversarial(w1)",
        "GAN / Adversarial(kl)",
        "GAN / Adversarial(reverse_kl)",
        "GAN / Adversarial(js)",
        "VAE / ELBO",
        "diffusion / Score(dsm)",
        "continuous flow / FlowMatching",
    ):
        assert name in report, name
    assert "Score(sliced)" not in report  # a fit the demo would show failing
    assert "Mode coverage" in report and "Bernoulli(0.3)" in report
    assert "| C2ST |" in report and "Floors, the training data against the held-out data: moons C2ST" in report
    assert report.count("- **") >= 9  # one line per fit on what it shows
    for png in ("samples.png", "losses.png", "divergences.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    fits = sorted(p.name for p in (tmp_path / "fits").iterdir())
    assert len(fits) == 9
    assert all((tmp_path / "fits" / f / "datatree.nc").is_file() for f in fits)
