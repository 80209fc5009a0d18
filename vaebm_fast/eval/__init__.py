"""Evaluation: metrics for 2-D toy samples and images, OOD detection, and PNG figures.

- ``toy_metrics``: mode coverage and energy distance of 2-D mixtures.
- ``image_metrics``: FID, KID and Inception Score by torchmetrics (the [eval] extra), in the
  feature space of any network: the digits network of ``classifiers`` or the FID Inception.
- ``classifiers``: small conv nets trained here (digits features, MNIST digit classifier).
- ``mode_coverage``: StackedMNIST modes covered and reverse KL.
- ``ood``: AUROC of OOD detection by a score.

The plotting functions are imported on first use (``vaebm_fast.eval.save_scatter``), so that
computing metrics does not pay for importing matplotlib; torchmetrics and scikit-learn are
likewise imported only by the functions that need them.
"""

from __future__ import annotations

from typing import Any

from .classifiers import (DigitsFeatureNet, MnistClassifier, classifier_accuracy,
                          train_digits_features, train_mnist_classifier)
from .image_metrics import (INCEPTION_WEIGHTS_URL, frechet_distance, inception_features,
                            inception_score, kernel_distance)
from .mode_coverage import stacked_mnist_modes
from .ood import ood_auroc, ood_report, ood_roc_curve
from .toy_metrics import energy_distance, mixture_metrics, mode_kl, mode_metrics

__all__ = [
    "mode_metrics",
    "mode_kl",
    "energy_distance",
    "mixture_metrics",
    "frechet_distance",
    "kernel_distance",
    "inception_score",
    "inception_features",
    "INCEPTION_WEIGHTS_URL",
    "DigitsFeatureNet",
    "MnistClassifier",
    "train_digits_features",
    "train_mnist_classifier",
    "classifier_accuracy",
    "stacked_mnist_modes",
    "ood_auroc",
    "ood_roc_curve",
    "ood_report",
    "save_scatter",
    "save_image_grid",
    "save_image_grids_side_by_side",
    "save_bar_chart",
    "save_roc_curves",
]

_PLOT_FUNCTIONS = ("save_scatter", "save_image_grid", "save_image_grids_side_by_side",
                   "save_bar_chart", "save_roc_curves")


def __getattr__(name: str) -> Any:
    if name in _PLOT_FUNCTIONS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
