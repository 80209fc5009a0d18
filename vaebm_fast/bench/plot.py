"""Charts and markdown redrawn from a results table (``vaebm-fast bench plot DIR``).

:func:`redraw` reads ``DIR/results.jsonl`` and, for every suite and device in it, writes
``DIR/<suite>_<device>.md`` (:func:`.table.render_markdown`) and ``DIR/<suite>_<device>.png``
(:func:`draw_chart`), each case from its latest run. Nothing is measured here.

The chart: one horizontal bar per timed variant, grouped by case (a case's name above its
bars), time per call on a log axis (cases a thousand times apart share one chart), ours,
the baselines, our eager reference and the copy_ ceiling in different colours, whiskers from
q1 to q3, the speed-up against the case's baseline printed at each of our bars, a noisy median
marked. The figure grows with the number of bars, so a bar stays readable.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .table import (device_label, is_noisy, latest_cases, read_rows, render_markdown,
                    speedup)

COLOURS = {"ours": "#1f77b4", "baseline": "#ff7f0e", "reference": "#9e9e9e",
           "ceiling": "#d9d9d9"}
LEGEND = {"ours": "vaebm_fast", "baseline": "baseline (what a user would run)",
          "reference": "our eager reference (oracle, not a baseline)",
          "ceiling": "copy_ (memory ceiling)"}
SUITE_TITLES = {"ops": "Op benchmarks", "chains": "Chain benchmarks",
                "scaling": "Scaling with processes (torch.distributed)"}


def suite_title(suite: str, device: str) -> str:
    return f"{SUITE_TITLES.get(suite, suite)} on {device}"


def redraw(out_dir) -> List[Path]:
    """Rewrite every ``<suite>_<device>.md`` and ``.png`` of ``out_dir`` from its table;
    return the paths written."""
    out_dir = Path(out_dir)
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for row in read_rows(out_dir):
        groups.setdefault((row["suite"], device_label(row["device"])), []).append(row)
    written = []
    for (suite, device), rows in groups.items():
        stem = out_dir / f"{suite}_{device}"
        title = suite_title(suite, device)
        stem.with_suffix(".md").write_text(render_markdown(rows, title))
        draw_chart(rows, stem.with_suffix(".png"), title)
        written += [stem.with_suffix(".md"), stem.with_suffix(".png")]
    return written


def draw_chart(rows: Sequence[Dict[str, Any]], path, title: str) -> Path:
    """The bar chart of ``rows`` (each case from its latest run) at ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only when drawing
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    cases = latest_cases(rows)
    # Layout, top to bottom: per case a header line, then its bars (fastest last is not
    # helpful when comparing: keep the run's order, baselines first as they were defined).
    items = []  # (y, kind, payload)
    y = 0.0
    for key, case_rows in cases.items():
        timed = [r for r in case_rows if r["median_s"]]
        if not timed:
            continue
        items.append((y, "header", case_rows[0]))
        y += 0.9
        for r in timed:
            items.append((y, "bar", (r, case_rows)))
            y += 1.0
        y += 0.5
    n_bars = sum(1 for _, kind, _ in items if kind == "bar")
    height = 1.6 + 0.3 * n_bars + 0.3 * len(cases)
    fig = Figure(figsize=(10, max(3.0, height)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = [(y, payload) for y, kind, payload in items if kind == "bar"]
    times = [r["median_s"] * 1e3 for _, (r, _) in bars]
    lo = min([r["q1_s"] * 1e3 for _, (r, _) in bars] + times) if bars else 1.0
    hi = max([r["q3_s"] * 1e3 for _, (r, _) in bars] + times) if bars else 10.0
    left, right = 10 ** math.floor(math.log10(lo) - 0.3), 10 ** math.ceil(math.log10(hi) + 1.6)
    for y, (r, case_rows) in bars:
        median, q1, q3 = (r[k] * 1e3 for k in ("median_s", "q1_s", "q3_s"))
        ax.barh(y, median - left, left=left, height=0.8, color=COLOURS[r["role"]],
                edgecolor="black" if r["variant"] == r["baseline"] else "none", linewidth=1.2,
                hatch="//" if is_noisy(r) else None)
        ax.errorbar(median, y, xerr=[[median - q1], [q3 - median]], fmt="none",
                    ecolor="black", elinewidth=1, capsize=3)
        label = format_ms(median)
        ratio = speedup(r, case_rows, r["baseline"])
        if r["role"] == "ours" and ratio:
            label += (f"   {ratio:.3g}× faster than {r['baseline']}" if ratio >= 1 else
                      f"   {1 / ratio:.3g}× slower than {r['baseline']}")
        if is_noisy(r):
            label += "   (noisy)"
        ax.text(q3 * 1.08, y, label, va="center", fontsize=8)
    ax.set_yticks([y for y, _ in bars])
    ax.set_yticklabels([r["variant"] + (" (baseline)" if r["variant"] == r["baseline"] else "")
                        for _, (r, _) in bars], fontsize=8.5)
    for y, kind, first in items:
        if kind == "header":
            text = first["case"] + (f": {first['size']}" if first["size"] else "")
            ax.text(left * 1.15, y - 0.05, text, va="center", ha="left", fontsize=9,
                    fontweight="bold")
    ax.set_xscale("log")
    ax.set_xlim(left, right)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda ms, _: format_ms(ms)))
    ax.set_ylim(y + 0.2 if items else 1, -0.8)
    ax.set_xlabel("time per call (log scale); whiskers: q1–q3; hatched: noisy "
                  "(IQR > 25% of the median)")
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    roles = [role for role in COLOURS if any(r["role"] == role for _, (r, _) in bars)]
    ax.legend(handles=[Patch(color=COLOURS[role], label=LEGEND[role]) for role in roles],
              loc="upper center", bbox_to_anchor=(0.5, -0.6 / max(3.0, height)),
              ncol=len(roles), fontsize=8, frameon=False)
    machine = next(iter(cases.values()))[0]["machine"] if cases else ""
    ax.set_title(f"{title}\n{_shorten(machine, 110)}", fontsize=10, loc="left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def format_ms(ms: float) -> str:
    """A duration given in ms, in the unit that reads best: 752 ns, 77 µs, 61.6 ms, 1.43 s."""
    unit, scale = next(((u, k) for u, k in (("s", 1e3), ("ms", 1.0), ("µs", 1e-3))
                        if ms >= k), ("ns", 1e-6))
    value = ms / scale
    return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"
