"""The results table: one JSON line per variant and run, and the markdown drawn from it.

A run of ``vaebm-fast bench ops|chains --out DIR`` appends its rows to ``DIR/results.jsonl``
(:func:`append_rows`); :func:`redraw` (also ``vaebm-fast bench plot DIR``) then rewrites
``DIR/<suite>_<device>.md`` and ``.png`` from the whole table, so a table can be redrawn
without rerunning anything. Without ``--out`` a run only prints :func:`render_markdown` of its
own rows.

A row (:func:`rows_from_result`) is flat JSON:

* what: ``suite`` (ops / chains), ``case``, ``title``, ``size`` (sizes and shapes in words),
  ``variant``, ``role`` (ours / baseline / reference / ceiling, see :mod:`.harness`),
  ``baseline`` (the variant the case's speed-ups are taken against), ``device``;
* the measurement: ``median_s``, ``q1_s``, ``q3_s`` (per call), ``samples`` (how many),
  ``samples_s`` (each), ``peak_mb`` (chains; None where not measured), ``bytes`` / ``flops``
  per call by our count (None: not counted), ``steps_per_call`` / ``batch`` (chains),
  ``items_per_call`` / ``item`` (scaling: what one call produces, e.g. 10 "steps": the table
  shows the rate), ``gpu_idle_share`` (chains ``--profile``: the share of one call the GPU
  was idle, :mod:`.profile`), ``skipped`` (why a variant was not timed; its times are then None),
  ``note``;
* where and when: ``commit``, ``machine`` (one sentence), ``torch``, ``timestamp`` (UTC, ISO),
  ``run`` (one id per command run), ``command``, ``run_note``.

Speed-ups, GB/s and the share of the copy_ ceiling are derived when drawing, from the rows of
one run: they are not stored, so they cannot disagree with the medians.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .harness import _fmt

TABLE = "results.jsonl"
# IQR / median above this flags a median as noisy (in the tables, the charts and on stderr).
NOISY_IQR = 0.25
PLAIN = "plain PyTorch"


def rows_from_result(suite: str, result: Dict[str, Any], context: Dict[str, Any],
                     extra: Optional[Dict[str, Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The rows of one case's :func:`~.harness.run_case` result (timed and skipped variants).

    ``context``: the run's fields (commit, machine, torch, timestamp, run, command, run_note);
    ``extra``: per variant name, fields to set (``peak_mb``; ``role`` of a skipped variant,
    "ours" otherwise), and under ``"*"`` fields for every row of the case (``steps_per_call``).
    """
    extra = extra or {}
    common = dict(suite=suite, case=result["key"], title=result["title"],
                  size=result.get("size", ""), baseline=result["baseline"],
                  device=result["device"], **extra.get("*", {}))
    rows = []
    for v in result["variants"]:
        row = dict(common, variant=v["name"], role=v["role"], median_s=v["median_s"],
                   q1_s=v["q1_s"], q3_s=v["q3_s"], samples=len(v["samples_s"]),
                   samples_s=v["samples_s"], bytes=v["bytes"], flops=v["flops"], peak_mb=None,
                   skipped=None, note=v["note"])
        rows.append({**row, **extra.get(v["name"], {}), **context})
    for s in result["skipped"]:
        row = dict(common, variant=s["name"], role="ours", median_s=None, q1_s=None,
                   q3_s=None, samples=0, samples_s=[], bytes=None, flops=None, peak_mb=None,
                   skipped=s["reason"], note="")
        rows.append({**row, **extra.get(s["name"], {}), **context})
    return rows


def append_rows(out_dir, rows: Sequence[Dict[str, Any]]) -> Path:
    """Append ``rows`` to ``out_dir``/results.jsonl (created with its folder if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / TABLE
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_rows(path) -> List[Dict[str, Any]]:
    """The rows of a results table (a file, or a folder holding results.jsonl)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        path = path / TABLE
    if not path.is_file():
        raise FileNotFoundError(f"no results table at {path}: run a benchmark with --out "
                                f"{path.parent} first")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number} is not a JSON row ({e})") from None
    return rows


def device_label(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the file name part of a device."""
    return device.split(":")[0]


def latest_cases(rows: Iterable[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """{case: the rows of its latest run}, cases in the order their latest runs were made
    (a case rerun later moves down; within one run, the order it ran)."""
    latest: Dict[str, tuple] = {}  # case -> (timestamp, run) of its latest run
    for row in rows:
        key = row["case"]
        if key not in latest or (row["timestamp"], row["run"]) >= latest[key]:
            latest[key] = (row["timestamp"], row["run"])
    by_case: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if (row["timestamp"], row["run"]) == latest[row["case"]]:
            by_case.setdefault(row["case"], []).append(row)
    return dict(sorted(by_case.items(), key=lambda kv: latest[kv[0]]))


def is_noisy(row: Dict[str, Any]) -> bool:
    """True when the row's IQR is above :data:`NOISY_IQR` of its median."""
    median = row.get("median_s")
    return bool(median) and (row["q3_s"] - row["q1_s"]) / median > NOISY_IQR


def speedup(row: Dict[str, Any], rows: Sequence[Dict[str, Any]], against: str) -> Optional[float]:
    """``against``'s median / ``row``'s median within one case's rows (None if either is
    missing or was not timed)."""
    ref = next((r for r in rows if r["variant"] == against and r["median_s"]), None)
    if ref is None or not row.get("median_s"):
        return None
    return ref["median_s"] / row["median_s"]


def _gbps(row) -> Optional[float]:
    return row["bytes"] / row["median_s"] / 1e9 if row.get("bytes") and row["median_s"] else None


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1e3


def render_markdown(rows: Sequence[Dict[str, Any]], title: str = "") -> str:
    """Markdown of a table's rows: the runs behind them, an overview with one line per case,
    then one table per case (each case from its latest run)."""
    cases = latest_cases(rows)
    if not cases:
        return f"# {title or 'Benchmarks'}\n\nNo rows.\n"
    shown = [row for case_rows in cases.values() for row in case_rows]
    runs: Dict[str, Dict[str, Any]] = {}
    for row in shown:
        runs.setdefault(row["run"], row)
    lines = [f"# {title or 'Benchmarks'}", ""]
    for row in sorted(runs.values(), key=lambda r: r["timestamp"]):
        keys = [k for k, case_rows in cases.items() if case_rows[0]["run"] == row["run"]]
        lines.append(f"- Run {row['timestamp']} (cases {', '.join(keys)}): "
                     f"`{row['command']}`; commit {row['commit'] or 'unknown'}; "
                     f"{row['machine']}." + (f" {row['run_note']}" if row.get("run_note") else ""))
    lines += ["", "Times are per call: the median over the samples and the IQR (q3 − q1), "
              "variants interleaved round-robin in one process after a warm-up "
              "(method: benchmarks/README.md). Speed-up = the case's baseline median / this "
              f"median; the baseline is what a user would otherwise run ({PLAIN}, written the "
              "obvious way, where there is one), never our eager reference (a correctness "
              "oracle, timed for information). "
              f"**noisy**: IQR above {NOISY_IQR:.0%} of the median; rerun on a quieter "
              "machine before quoting it.", ""]
    lines += _overview(cases) + [""]
    for key, case_rows in cases.items():
        lines += _case_table(key, case_rows)
    return "\n".join(lines)


def _overview(cases: Dict[str, List[Dict[str, Any]]]) -> List[str]:
    """One line per case: the fastest of ours against the baseline, and any other baseline
    that beats it (a speed-up over the plain loop must not hide a faster torch op)."""
    lines = ["| case | size | best of ours | ms | baseline | ms | speed-up | faster than ours |",
             "|---|---|---|---|---|---|---|---|"]
    for key, rows in cases.items():
        ours = [r for r in rows if r["role"] == "ours" and r["median_s"]]
        base = next((r for r in rows if r["variant"] == rows[0]["baseline"]), None)
        best = min(ours, key=lambda r: r["median_s"]) if ours else None
        ratio = speedup(best, rows, rows[0]["baseline"]) if best else None
        beaten_by = [f"{r['variant']} ({_fmt(_ms(r['median_s']), '.3g')} ms)" for r in rows
                     if best and r["role"] == "baseline" and r["median_s"]
                     and r["median_s"] < best["median_s"]]
        lines.append("| " + " | ".join([
            f"`{key}`", rows[0]["size"] or "—", best["variant"] if best else "not run",
            _fmt(_ms(best["median_s"]) if best else None, ".3g"),
            rows[0]["baseline"], _fmt(_ms(base["median_s"]) if base else None, ".3g"),
            (_fmt(ratio, ".3g") + "×") if ratio else "—",
            ", ".join(beaten_by) or "—"]) + " |")
    return lines


def _case_table(key: str, rows: List[Dict[str, Any]]) -> List[str]:
    first = rows[0]
    baseline = first["baseline"]
    timed = [r for r in rows if r["median_s"]]
    has_official = any(r["variant"] == "official-style" for r in timed) and baseline != \
        "official-style"
    has_bytes = any(r.get("bytes") for r in timed)
    ceiling = next((r for r in timed if r["role"] == "ceiling"), None)
    has_steps = any((r.get("steps_per_call") or 1) > 1 for r in timed)
    has_peak = any(r.get("peak_mb") is not None for r in timed)
    item = next((r["item"] for r in timed if r.get("items_per_call")), None)
    has_idle = any(r.get("gpu_idle_share") is not None for r in timed)
    header = ["variant", "role", "median ms", "IQR ms", f"speed-up vs {baseline}"]
    header += ["vs official-style"] if has_official else []
    header += ["ms/step"] if has_steps else []
    header += [f"{item}/s"] if item else []
    header += ["GB/s", "% of copy_"] if has_bytes else []
    header += ["peak MB"] if has_peak else []
    header += ["GPU idle %"] if has_idle else []
    header += ["samples", ""]
    lines = [f"## {first['title']} (`{key}`)", "",
             f"{first['size']}. Device {first['device']}." if first["size"] else
             f"Device {first['device']}.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in timed:
        ratio = speedup(r, rows, baseline) if r["role"] != "ceiling" else None
        cells = [r["variant"] + (" (baseline)" if r["variant"] == baseline else ""), r["role"],
                 _fmt(_ms(r["median_s"]), ".3g"), _fmt(_ms(r["q3_s"] - r["q1_s"]), ".2g"),
                 _fmt(ratio, ".3g") + "×" if ratio else "—"]
        if has_official:
            off = speedup(r, rows, "official-style") if r["role"] != "ceiling" else None
            cells.append(_fmt(off, ".3g") + "×" if off else "—")
        if has_steps:
            cells.append(_fmt(_ms(r["median_s"]) / (r.get("steps_per_call") or 1), ".3g"))
        if item:
            cells.append(_fmt(r["items_per_call"] / r["median_s"], ".3g"))
        if has_bytes:
            gbps, ceil = _gbps(r), _gbps(ceiling) if ceiling else None
            cells += [_fmt(gbps, ".3g"),
                      _fmt(100 * gbps / ceil if gbps and ceil else None, ".0f")]
        if has_peak:
            cells.append(_fmt(r.get("peak_mb"), ".3g"))
        if has_idle:
            idle = r.get("gpu_idle_share")
            cells.append("—" if idle is None else f"{100 * idle:.1f}")
        cells += [str(r["samples"]), "**noisy**" if is_noisy(r) else ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- **{r['variant']}**: {r['note']}" for r in timed if r.get("note")]
    lines += [f"- **{r['variant']}**: not run ({r['skipped']})" for r in rows if r["skipped"]]
    lines.append("")
    return lines


def noisy_warnings(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """One line per noisy row, for stderr."""
    return [f"warning: noisy median: {r['case']} / {r['variant']}: IQR "
            f"{(r['q3_s'] - r['q1_s']) * 1e3:.3g} ms is "
            f"{(r['q3_s'] - r['q1_s']) / r['median_s']:.0%} of the median "
            f"{r['median_s'] * 1e3:.3g} ms (threshold {NOISY_IQR:.0%})"
            for r in rows if is_noisy(r)]
