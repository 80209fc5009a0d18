"""The one timing harness for op benchmarks (method: docs/design.md#measuring-speed).

A benchmark describes a :class:`Case`: a few :class:`Variant` s that compute the same thing
(each a zero-argument callable that owns its tensors), which of them is the baseline, and how
many elements the memory-bandwidth ceiling should copy. :func:`run_case` then

1. adds the ceiling as one more variant: ``dst.copy_(src)`` on ``ceiling_numel`` elements of
   the case's dtype and device (it reads and writes each element: ``2 * itemsize`` B/elem);
2. warms every variant up, and sizes a sample to at least ``min_sample_s`` of calls
   (``warmup=0``, for cases whose one call takes minutes: no warm-up, one call per sample);
3. times ``repeats`` rounds, each round one sample of every variant (round-robin, the order
   rotated every round), so drifting machine load hits all variants alike;
4. reports per-call medians and IQRs, the speed-up against the baseline
   (``baseline median / variant median``), and, where the variant states the bytes it moves
   (or FLOPs it does), GB/s (GFLOP/s) and the fraction of the copy_ bandwidth.

:func:`write_report` writes ``<name>.json``, ``<name>.md`` (markdown tables) and ``<name>.png``
(bar chart of the speed-ups). Nothing here queries a device at import.
"""
from __future__ import annotations

import datetime
import gc
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["Variant", "Case", "run_case", "write_report", "render_markdown",
           "report_header", "add_run_arguments", "save_chart", "describe_machine", "CEILING",
           "RESULTS"]

CEILING = "copy_ (ceiling)"
_ROOT = Path(__file__).resolve().parents[2]
# Default results directory: benchmarks/results of the source checkout this package lives in
# (also an editable install); for an installed package, ./benchmarks/results of the cwd.
RESULTS = (_ROOT / "benchmarks" / "results" if (_ROOT / "benchmarks").is_dir()
           else Path("benchmarks") / "results")


@dataclass
class Variant:
    """One way of computing the case's result.

    ``fn`` runs one call (it may mutate tensors it owns). ``bytes_moved`` / ``flops``: what one
    call reads + writes / computes by our count (None: not counted); ``note`` says how.
    """

    name: str
    fn: Callable[[], Any]
    bytes_moved: Optional[int] = None
    flops: Optional[int] = None
    note: str = ""


@dataclass
class Case:
    """A measurement: variants of one computation, compared against ``baseline``.

    ``key``: short id (chart labels, JSON); ``ceiling_numel``: elements the copy_ ceiling
    copies (normally the op's element count; None: no ceiling, e.g. for whole Langevin chains,
    which are not memory-bound); ``skipped``: ``{variant: reason}`` for variants
    that cannot run on this machine (reported, not timed).
    """

    key: str
    title: str
    description: str
    variants: List[Variant]
    baseline: str
    ceiling_numel: Optional[int]
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    skipped: Optional[Dict[str, str]] = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ceiling_variant(numel: int, dtype: torch.dtype, device: torch.device) -> Variant:
    src = torch.ones(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    itemsize = src.element_size()
    return Variant(CEILING, lambda: dst.copy_(src), bytes_moved=2 * itemsize * numel,
                   note=f"plain Tensor.copy_ of {numel:,} elements: reads and writes "
                        f"{itemsize} B each ({2 * itemsize} B/elem)")


def _time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Seconds per call, averaged over ``calls`` back-to-back calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def run_case(case: Case, *, repeats: int = 15, warmup: int = 2,
             min_sample_s: float = 0.05) -> Dict[str, Any]:
    """Time ``case`` (see the module docstring) and return its JSON-ready result."""
    names = [v.name for v in case.variants]
    if case.baseline not in names:
        raise ValueError(f"baseline {case.baseline!r} is not a variant of {case.key} "
                         f"(variants: {names})")
    if len(set(names)) != len(names) or CEILING in names:
        raise ValueError(f"variant names must be unique and not {CEILING!r} (got {names})")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    device = torch.device(case.device)
    variants = list(case.variants)
    if case.ceiling_numel is not None:
        variants.append(_ceiling_variant(case.ceiling_numel, case.dtype, device))

    gc.collect()
    calls_per_sample = []
    for v in variants:  # warm-up; the last warm-up call sizes the sample
        seconds = math.inf
        for _ in range(warmup):
            seconds = _time_calls(v.fn, 1, device)
        calls_per_sample.append(max(1, math.ceil(min_sample_s / max(seconds, 1e-9))))

    samples: List[List[float]] = [[] for _ in variants]
    for r in range(repeats):
        for j in range(len(variants)):
            i = (r + j) % len(variants)  # rotate the order every round
            samples[i].append(_time_calls(variants[i].fn, calls_per_sample[i], device))

    medians = [statistics.median(s) for s in samples]
    baseline_median = medians[names.index(case.baseline)]
    ceiling_gbps = (None if case.ceiling_numel is None
                    else variants[-1].bytes_moved / medians[-1] / 1e9)
    rows = []
    for v, s, median, calls in zip(variants, samples, medians, calls_per_sample):
        q1, q3 = _quartiles(s)
        gbps = None if v.bytes_moved is None else v.bytes_moved / median / 1e9
        rows.append({
            "name": v.name,
            "role": ("baseline" if v.name == case.baseline
                     else "ceiling" if v.name == CEILING and case.ceiling_numel is not None
                     else "variant"),
            "median_s": median, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1,
            "speedup_vs_baseline": baseline_median / median,
            "bytes": v.bytes_moved, "gbps": gbps,
            "fraction_of_copy_bw": None if gbps is None or ceiling_gbps is None
            else gbps / ceiling_gbps,
            "flops": v.flops,
            "gflops": None if v.flops is None else v.flops / median / 1e9,
            "calls_per_sample": calls, "samples_s": s, "note": v.note,
        })
    return {
        "key": case.key, "title": case.title, "description": case.description,
        "device": str(device), "dtype": str(case.dtype).replace("torch.", ""),
        "baseline": case.baseline, "ceiling_numel": case.ceiling_numel,
        "ceiling_gbps": ceiling_gbps, "repeats": repeats, "warmup": warmup,
        "variants": rows,
        "skipped": [{"name": k, "reason": why} for k, why in (case.skipped or {}).items()],
    }


def _quartiles(samples: Sequence[float]) -> tuple:
    if len(samples) < 2:
        return samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, q3


# ------------------------------------------------------------------------------ the machine

def describe_machine(info: Dict[str, Any]) -> str:
    """One sentence of :func:`vaebm_fast.info.machine_info`'s dict, for report headers."""
    text = (f"{info['cpu']}, {info['usable_cores']} usable cores (of {info['cpu_count']}), "
            f"torch {info['torch']} with {info['torch_threads']} threads, "
            f"Python {info['python']}, {info['platform']}; device {info['device']}")
    if "gpu" in info:
        text += f" ({info['gpu']})"
    return text


# ------------------------------------------------------------------------------ the report

def _fmt(value: Optional[float], spec: str) -> str:
    """``value`` formatted with ``spec``, but whole numbers from 100 on (no 5.7e+03)."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else format(value, spec)


def add_run_arguments(parser, kind: str, repeats_help: str) -> None:
    """The options every benchmark command takes: --quick, --device, --out, --name, --repeats,
    --only (``kind`` names the default file stem, ``<kind>_<device type>[_quick]``)."""
    parser.add_argument("--quick", action="store_true", help="smoke sizes and few repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--name", help=f"file stem (default {kind}_<device type>[_quick])")
    parser.add_argument("--repeats", type=int, help=f"samples per variant ({repeats_help})")
    parser.add_argument("--only", metavar="REGEX", help="run only the cases whose key matches")


def report_header(report: Dict[str, Any]) -> List[str]:
    """The title and the "Measured ... on ..." paragraph of a report (markdown lines): when,
    which machine, commit, command, and the threads / machine notes in its settings."""
    s = report["settings"]
    return [
        f"# {report['title']}", "",
        f"Measured {report['created']} on {describe_machine(report['machine'])}. "
        f"Commit: {report['machine']['git'] or 'unknown'}."
        + (f" Command: `{s['command'].strip()}`." if s.get("command") else "")
        + (f" Threads: {s['threads_note']}." if s.get("threads_note") else "")
        + (f" {s['machine_note']}" if s.get("machine_note") else ""), "",
    ]


def render_markdown(report: Dict[str, Any]) -> str:
    """Markdown: the machine, the method, then one table per case."""
    s = report["settings"]
    lines = report_header(report) + [
        f"Method: variants interleaved round-robin in one process after {s['warmup']} warm-up "
        f"call(s) each; {s['repeats']} samples per variant, each sample ≥ "
        f"{s['min_sample_s'] * 1e3:g} ms of back-to-back calls. Times are per call: median and "
        f"IQR (q3 − q1) over the samples. Speed-up = baseline median / variant median. GB/s = "
        f"bytes we count per call / median. The ceiling is a plain `copy_` of the same number "
        f"of elements on the same device in the same run; \"% of copy_\" is a variant's GB/s "
        f"over the ceiling's.", "",
    ]
    for case in report["cases"]:
        lines += [f"## {case['title']}", "", case["description"], ""]
        with_flops = any(row["flops"] is not None for row in case["variants"])
        header = ["variant", "median ms", "IQR ms", f"speed-up vs {case['baseline']}",
                  "MB/call", "GB/s", "% of copy_"] + (["GFLOP/s"] if with_flops else [])
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in case["variants"]:
            name = row["name"] + (" (baseline)" if row["role"] == "baseline" else "")
            cells = [name, _fmt(row["median_s"] * 1e3, ".3g"), _fmt(row["iqr_s"] * 1e3, ".2g"),
                     _fmt(row["speedup_vs_baseline"], ".3g") + "×",
                     _fmt(None if row["bytes"] is None else row["bytes"] / 1e6, ".1f"),
                     _fmt(row["gbps"], ".3g"),
                     _fmt(None if row["fraction_of_copy_bw"] is None
                          else 100 * row["fraction_of_copy_bw"], ".0f")]
            if with_flops:
                cells.append(_fmt(row["gflops"], ".3g"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- **{row['name']}**: {row['note']}" for row in case["variants"]
                  if row["note"]]
        lines += [f"- **{skip['name']}**: not run ({skip['reason']})"
                  for skip in case["skipped"]]
        lines.append("")
    return "\n".join(lines)


def write_report(name: str, title: str, cases: Sequence[Dict[str, Any]], out_dir, *,
                 machine: Dict[str, Any], settings: Dict[str, Any],
                 render: Callable[[Dict[str, Any]], str] = None,
                 chart: Callable[[Dict[str, Any], Path], Any] = None) -> Dict[str, Path]:
    """Write ``<out_dir>/<name>.json``, ``.md`` and ``.png``; return their paths.

    ``render`` (report -> markdown) and ``chart`` (report, path -> None) default to
    :func:`render_markdown` and :func:`save_chart` (the op tables); a benchmark with other
    columns passes its own."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "name": name, "title": title,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine, "settings": dict(settings), "cases": list(cases),
    }
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md",
             "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["md"].write_text((render or render_markdown)(report))
    (chart or save_chart)(report, paths["png"])
    return paths


def save_chart(report: Dict[str, Any], path) -> Path:
    """Bar chart of every variant's speed-up against its case's baseline (ceilings left out)."""
    from vaebm_fast.eval.plots import save_bar_chart  # matplotlib: only when writing

    machine = report["machine"]
    bars = [(f"{case['key']}: {row['name']}", row["speedup_vs_baseline"])
            for case in report["cases"] for row in case["variants"] if row["role"] != "ceiling"]
    return save_bar_chart(path, [label for label, _ in bars], [value for _, value in bars],
                          ylabel="speed-up vs baseline (×)",
                          title=f"{report['title']}: speed-up vs each case's baseline\n"
                                f"{machine['cpu']}, {machine['torch_threads']} torch threads, "
                                f"{machine['device']}")
