"""Out-of-distribution detection by a score: AUROC and ROC curves.

The VAEBM paper detects OOD images with the energy E(x), the negative ELBO, or their sum; each is
a score that is *higher for OOD inputs*. OOD images are the positive class, so an AUROC of 1 means
every OOD image scores above every in-distribution one, 0.5 means the score does not tell them
apart, and below 0.5 means the score ranks them backwards (pass ``higher_is_ood=False`` for a
score such as a log-likelihood). Ties count half (``sklearn.metrics.roc_auc_score``).

:func:`ood_report` scores several scores at once and draws their ROC curves into one PNG, as
the paper's table compares them. Needs scikit-learn (the [cli] extra); the figure needs
matplotlib (also [cli]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .._requirements import missing_extra

__all__ = ["ood_auroc", "ood_roc_curve", "ood_report"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _labelled(in_scores: ArrayLike, ood_scores: ArrayLike,
              higher_is_ood: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(labels: 1 for OOD, scores) over both sets, float64."""
    parts = []
    for name, scores in (("in_scores", in_scores), ("ood_scores", ood_scores)):
        if hasattr(scores, "detach"):
            scores = scores.detach().cpu().numpy()
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError(f"{name} must be a non-empty set of finite scores (got "
                             f"{scores.size} values, {int((~np.isfinite(scores)).sum())} not "
                             f"finite)")
        parts.append(scores)
    labels = np.concatenate([np.zeros(len(parts[0])), np.ones(len(parts[1]))])
    scores = np.concatenate(parts)
    return labels, scores if higher_is_ood else -scores


def _metrics():
    try:
        from sklearn import metrics
    except ModuleNotFoundError:
        raise missing_extra("OOD AUROC", "scikit-learn") from None
    return metrics


def ood_auroc(in_scores: ArrayLike, ood_scores: ArrayLike, *, higher_is_ood: bool = True) -> float:
    """AUROC of telling ``ood_scores`` [M] from ``in_scores`` [N] by the score."""
    labels, scores = _labelled(in_scores, ood_scores, higher_is_ood)
    return float(_metrics().roc_auc_score(labels, scores))


def ood_roc_curve(in_scores: ArrayLike, ood_scores: ArrayLike, *,
                  higher_is_ood: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of each threshold, for plotting."""
    labels, scores = _labelled(in_scores, ood_scores, higher_is_ood)
    fpr, tpr, _ = _metrics().roc_curve(labels, scores)
    return fpr, tpr


def ood_report(scores: Mapping[str, Tuple[ArrayLike, ArrayLike]],
               png_path: Optional[Union[str, Path]] = None, *,
               title: str = "OOD detection") -> Dict[str, float]:
    """AUROC of each score, e.g. ``{"energy": (E_in, E_ood), "-ELBO": (...), "sum": (...)}``
    (higher = more OOD for all); with ``png_path``, also their ROC curves in one PNG there."""
    if not scores:
        raise ValueError("scores must hold at least one (in_scores, ood_scores) pair, keyed by "
                         "score name")
    aurocs = {name: ood_auroc(in_scores, ood_scores)
              for name, (in_scores, ood_scores) in scores.items()}
    if png_path is not None:
        from .plots import save_roc_curves
        save_roc_curves(png_path, {name: ood_roc_curve(in_scores, ood_scores)
                                   for name, (in_scores, ood_scores) in scores.items()},
                        title=title)
    return aurocs
