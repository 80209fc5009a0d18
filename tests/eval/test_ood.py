"""OOD detection AUROC from a score, and its ROC figure."""
import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from vaebm_fast.eval import ood_auroc, ood_roc_curve  # noqa: E402


def test_separable_scores_give_one_and_identical_scores_give_a_half():
    rng = np.random.default_rng(0)
    in_scores = rng.normal(0, 1, 500)
    assert ood_auroc(in_scores, in_scores + 100) == 1.0
    assert ood_auroc(in_scores, in_scores.copy()) == 0.5
    assert ood_auroc(in_scores + 100, in_scores) == 0.0


def test_lower_is_ood_flips_the_score():
    assert ood_auroc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0]),
                     higher_is_ood=False) == 1.0


def test_overlapping_scores_give_the_probability_of_ranking_right():
    # P(OOD score > in score) over all pairs: (1 + 0.5 + 1 + 1) / 4.
    assert ood_auroc([1.0, 3.0], [3.0, 4.0]) == pytest.approx(0.875)


def test_roc_curve_runs_from_corner_to_corner():
    fpr, tpr = ood_roc_curve([0.0, 1.0, 2.0], [1.5, 3.0])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_non_finite_or_empty_scores_are_a_clear_error():
    with pytest.raises(ValueError, match="in_scores .* 1 not finite"):
        ood_auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="ood_scores must be a non-empty"):
        ood_auroc([0.0], [])


def test_roc_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from vaebm_fast.eval import save_roc_curves
    rng = np.random.default_rng(0)
    in_scores, ood_scores = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    path = save_roc_curves(tmp_path / "figs" / "roc.png", {
        "energy": ood_roc_curve(in_scores, ood_scores),
        "-ELBO": ood_roc_curve(in_scores, ood_scores * 0.5)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        save_roc_curves(tmp_path / "empty.png", {})


def test_report_scores_each_score_and_draws_one_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from vaebm_fast.eval import ood_report
    rng = np.random.default_rng(1)
    energy_in, energy_ood = rng.normal(0, 1, 300), rng.normal(3, 1, 300)
    elbo_in, elbo_ood = rng.normal(0, 1, 300), rng.normal(0, 1, 300)
    aurocs = ood_report({"energy": (energy_in, energy_ood), "-ELBO": (elbo_in, elbo_ood),
                         "sum": (energy_in + elbo_in, energy_ood + elbo_ood)},
                        tmp_path / "roc.png")
    assert list(aurocs) == ["energy", "-ELBO", "sum"]
    assert aurocs["energy"] > 0.95 and abs(aurocs["-ELBO"] - 0.5) < 0.1
    assert aurocs["energy"] == ood_auroc(energy_in, energy_ood)
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
