"""Evaluation: metrics for 2-D toy samples and PNG figures.

The plotting functions are imported on first use (``vaebm_fast.eval.save_scatter``), so that
computing metrics does not pay for importing matplotlib.
"""

from __future__ import annotations

from typing import Any

from .toy_metrics import energy_distance, mixture_metrics, mode_kl, mode_metrics

__all__ = [
    "mode_metrics",
    "mode_kl",
    "energy_distance",
    "mixture_metrics",
    "save_scatter",
    "save_image_grid",
    "save_image_grids_side_by_side",
    "save_bar_chart",
]

_PLOT_FUNCTIONS = ("save_scatter", "save_image_grid", "save_image_grids_side_by_side",
                   "save_bar_chart")


def __getattr__(name: str) -> Any:
    if name in _PLOT_FUNCTIONS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
