"""PNG figures: 2-D scatter panels, image grids, bar charts for benchmarks, ROC curves.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, never
through ``pyplot``, so nothing here changes matplotlib's global backend or state, and it works
on machines without a display. Every function creates the parent directories, writes the PNG
atomically (temporary file + ``os.replace``) and returns the path written.

Inputs may be torch tensors (on any device, with or without grad) or NumPy arrays.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._requirements import missing_extra
from ..checkpoint import write_atomically

try:  # matplotlib is optional (the [cli] extra): only the figures need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.image import imsave
except ModuleNotFoundError:
    raise missing_extra("drawing figures", "matplotlib") from None

__all__ = ["save_scatter", "save_image_grid", "save_image_grids_side_by_side", "save_bar_chart",
           "save_roc_curves"]

PathLike = Union[str, Path]
Limits = Union[float, Tuple[float, float], None]

_DPI = 100
_MIN_CELL_PIXELS = 64  # small images (8 x 8 digits) are upscaled to at least this size


def _to_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _save_figure(figure: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    return write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=_DPI))


# ----------------------------------------------------------------------------- scatter plots


def _points(points: Any, name: str) -> np.ndarray:
    points = _to_numpy(points).astype(np.float64, copy=False)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"panel {name!r} must have shape [N, 2] (got {list(points.shape)}); "
                         f"pass 2-D points, one per row")
    return points


def _axis_limits(point_sets: Sequence[np.ndarray], lim: Limits) -> Tuple[float, float]:
    """(low, high) shared by both axes of every panel."""
    if lim is not None:
        if np.isscalar(lim):
            return -float(lim), float(lim)
        low, high = lim
        return float(low), float(high)
    # Automatic: a square around the bulk of the points. The 99.5th percentile of |coordinate|
    # keeps a few diverged samples from squeezing everything else into the middle.
    magnitudes = np.concatenate([np.abs(p[np.isfinite(p).all(axis=1)]).ravel()
                                 for p in point_sets])
    if magnitudes.size == 0:
        return -1.0, 1.0
    half_width = 1.1 * max(float(np.quantile(magnitudes, 0.995)), 1e-6)
    return -half_width, half_width


def save_scatter(
    path: PathLike,
    panels: Mapping[str, Any],
    means: Any = None,
    title: Optional[str] = None,
    lim: Limits = None,
) -> Path:
    """Side-by-side scatter plots of 2-D point sets on the same axes.

    Args:
        path: the PNG to write.
        panels: name -> points [N, 2], drawn left to right, e.g.
            ``{"data": x, "VAE": x_vae, "VAEBM": x_vaebm}``.
        means: optional [K, 2] mixture means, marked with red crosses on every panel.
        title: optional title above all panels.
        lim: axis range for both axes: ``L`` for [-L, L], ``(low, high)``, or None to fit the
            bulk of the points and means.
    """
    if not panels:
        raise ValueError("panels must name at least one point set, e.g. {'data': x}")
    point_sets = {name: _points(points, name) for name, points in panels.items()}
    mean_points = None if means is None else _points(means, "means")
    low, high = _axis_limits(
        list(point_sets.values()) + ([mean_points] if mean_points is not None else []), lim)

    figure = Figure(figsize=(4.0 * len(point_sets), 4.3 if title else 4.0),
                    layout="constrained")
    axes = figure.subplots(1, len(point_sets), squeeze=False)[0]
    for ax, (name, points) in zip(axes, point_sets.items()):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, linewidths=0, color="tab:blue",
                   rasterized=True)
        if mean_points is not None:
            ax.scatter(mean_points[:, 0], mean_points[:, 1], s=25, marker="x", color="tab:red",
                       linewidths=1)
        ax.set_title(f"{name} (n={len(points)})")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path)


# ----------------------------------------------------------------------------- image grids


def _grid_pixels(images: Any, nrow: Optional[int], name: str = "images") -> np.ndarray:
    """An [H', W', 3] uint8 RGB grid of ``images`` [N, C, H, W], upscaled by pixel repetition.

    ``nrow`` images go in each row (default: ceil(sqrt(N))); 1-pixel grey lines separate
    them; values are clipped to [0, 1] and NaN shows as black.
    """
    images = _to_numpy(images).astype(np.float32, copy=False)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, C, H, W] with N >= 1 and C = 1 or 3 "
                         f"(got {list(images.shape)}); pass a batch of images in [0, 1]")
    num_images, channels, height, width = images.shape
    per_row = nrow if nrow is not None else math.ceil(math.sqrt(num_images))
    if per_row < 1:
        raise ValueError(f"nrow must be >= 1 (got {nrow})")
    num_rows = math.ceil(num_images / per_row)

    images = np.clip(np.nan_to_num(images, nan=0.0), 0.0, 1.0)
    if channels == 1:
        images = np.repeat(images, 3, axis=1)
    scale = max(1, math.ceil(_MIN_CELL_PIXELS / max(height, width)))
    images = images.repeat(scale, axis=2).repeat(scale, axis=3)  # nearest-neighbour upscale
    cell_h, cell_w = height * scale, width * scale

    pad = 1
    grid = np.full((3, num_rows * (cell_h + pad) + pad, per_row * (cell_w + pad) + pad), 0.5,
                   dtype=np.float32)
    for index in range(num_images):
        row, col = divmod(index, per_row)
        top, left = pad + row * (cell_h + pad), pad + col * (cell_w + pad)
        grid[:, top:top + cell_h, left:left + cell_w] = images[index]
    return (grid.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def save_image_grid(path: PathLike, images: Any, nrow: Optional[int] = None) -> Path:
    """Write ``images`` [N, C, H, W] (C = 1 or 3, values in [0, 1]) as one grid PNG.

    ``nrow`` images per row (default ceil(sqrt(N))). Images smaller than 64 pixels are upscaled
    by an integer factor with nearest-neighbour repetition, so 8 x 8 digits stay crisp; the PNG
    is pixel-exact (no axes, no resampling).
    """
    pixels = _grid_pixels(images, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda file: imsave(file, pixels, format="png"))


def save_image_grids_side_by_side(
    path: PathLike, grids: Mapping[str, Any], nrow: Optional[int] = None
) -> Path:
    """Write one labelled image grid per entry of ``grids`` (name -> images [N, C, H, W]),
    left to right, e.g. ``{"data": x, "VAE": x_vae, "VAEBM": x_vaebm}``."""
    if not grids:
        raise ValueError("grids must name at least one batch of images, e.g. {'data': x}")
    pixel_grids = {name: _grid_pixels(images, nrow, f"grids[{name!r}]")
                   for name, images in grids.items()}
    width = sum(p.shape[1] for p in pixel_grids.values()) + 20 * len(pixel_grids)
    height = max(p.shape[0] for p in pixel_grids.values()) + 40
    figure = Figure(figsize=(width / _DPI, height / _DPI), layout="constrained")
    axes = figure.subplots(1, len(pixel_grids), squeeze=False,
                           width_ratios=[p.shape[1] for p in pixel_grids.values()])[0]
    for ax, (name, pixels) in zip(axes, pixel_grids.items()):
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    return _save_figure(figure, path)


# ----------------------------------------------------------------------------- bar charts


def save_bar_chart(
    path: PathLike,
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    title: str,
    *,
    errors: Optional[Sequence[float]] = None,
) -> Path:
    """A bar per label with its value printed on top (e.g. samples/s of eager vs fused).

    ``errors``, if given, draws symmetric error bars of those half-widths.
    """
    labels = [str(label) for label in labels]
    values = _to_numpy(values).astype(np.float64).reshape(-1)
    if len(labels) != len(values) or not labels:
        raise ValueError(f"labels and values must be non-empty and of equal length (got "
                         f"{len(labels)} labels, {len(values)} values)")
    error_bars = None if errors is None else _to_numpy(errors).astype(np.float64).reshape(-1)

    figure = Figure(figsize=(max(4.0, 1.2 * len(labels) + 1.5), 4.0), layout="constrained")
    ax = figure.subplots()
    bars = ax.bar(range(len(labels)), values, yerr=error_bars, color="tab:blue",
                  capsize=0 if error_bars is None else 4)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2)
    long_labels = max(len(label) for label in labels) > 10
    ax.set_xticks(range(len(labels)), labels, rotation=30 if long_labels else 0,
                  ha="right" if long_labels else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    return _save_figure(figure, path)


# ----------------------------------------------------------------------------- ROC curves


def save_roc_curves(
    path: PathLike,
    curves: Mapping[str, Tuple[Any, Any]],
    title: str = "OOD detection",
) -> Path:
    """One ROC curve per score, e.g. ``{"energy": (fpr, tpr), "-ELBO": (fpr, tpr)}`` from
    :func:`vaebm_fast.eval.ood_roc_curve`; the legend gives each curve's area (AUROC)."""
    if not curves:
        raise ValueError("curves must hold at least one (fpr, tpr) pair, keyed by score name")
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = figure.subplots()
    for name, (fpr, tpr) in curves.items():
        fpr = _to_numpy(fpr).astype(np.float64).reshape(-1)
        tpr = _to_numpy(tpr).astype(np.float64).reshape(-1)
        if len(fpr) != len(tpr) or len(fpr) < 2:
            raise ValueError(f"curve {name!r} needs matching fpr and tpr of 2 or more points "
                             f"(got {len(fpr)} and {len(tpr)})")
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid rule
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (in-distribution flagged)")
    ax.set_ylabel("true positive rate (OOD flagged)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return _save_figure(figure, path)
