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

Every variant has a role: ``ours`` (what vaebm_fast offers), ``baseline`` (what a user would
otherwise run: a plain PyTorch loop written the obvious way, the official-style loop,
torch.compile, torch's own op), ``reference`` (our eager reference, a correctness oracle that is
timed for information, never a baseline) or ``ceiling`` (the copy_ the harness adds). A case's
``baseline`` names the one variant its speed-ups are taken against.

The options every suite takes (:func:`add_run_arguments`) and the ``--only`` check
(:func:`select_keys`) are here too; what a run writes is :mod:`.table`'s and :mod:`.plot`'s job.
Nothing here queries a device at import.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = ["Variant", "Case", "run_case", "add_run_arguments", "select_keys", "usage_error",
           "print_catalogue", "torch_threads", "describe_machine", "CEILING", "ROLES"]

CEILING = "copy_ (ceiling)"
ROLES = ("ours", "baseline", "reference", "ceiling")


@dataclass
class Variant:
    """One way of computing the case's result.

    ``fn`` runs one call (it may mutate tensors it owns). ``bytes_moved`` / ``flops``: what one
    call reads + writes / computes by our count (None: not counted); ``note`` says how.
    ``role``: ``ours``, ``baseline`` or ``reference`` (module docstring).
    """

    name: str
    fn: Callable[[], Any]
    bytes_moved: Optional[int] = None
    flops: Optional[int] = None
    note: str = ""
    role: str = "ours"

    def __post_init__(self):
        if self.role not in ROLES[:3]:
            raise ValueError(f"variant {self.name!r}: role must be one of {ROLES[:3]} "
                             f"(got {self.role!r})")


@dataclass
class Case:
    """A measurement: variants of one computation, compared against ``baseline``.

    ``key``: short id (chart labels, JSON); ``ceiling_numel``: elements the copy_ ceiling
    copies (normally the op's element count; None: no ceiling, e.g. for whole Langevin chains,
    which are not memory-bound); ``skipped``: ``{variant: reason}`` for variants
    that cannot run on this machine (reported, not timed); ``size``: the sizes and shapes in a
    few words (a column of the results table).
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
    size: str = ""


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


def _ceiling_role(v: Variant, case: Case) -> str:
    return "ceiling" if v.name == CEILING and case.ceiling_numel is not None else v.role


def run_case(case: Case, *, repeats: int = 15, warmup: int = 2,
             min_sample_s: float = 0.05) -> Dict[str, Any]:
    """Time ``case`` (see the module docstring) and return its JSON-ready result."""
    names = [v.name for v in case.variants]
    roles = {v.name: v.role for v in case.variants}
    if roles.get(case.baseline, "baseline") != "baseline":
        raise ValueError(f"{case.key}: speed-ups are taken against a baseline, not against "
                         f"{case.baseline!r} (role {roles[case.baseline]!r})")
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
            "role": _ceiling_role(v, case),
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
        "size": case.size,
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
            f"torch {info['torch']} with {info['torch_threads']} thread"
            f"{'' if info['torch_threads'] == 1 else 's'}, "
            f"Python {info['python']}, {info['platform']}; device {info['device']}")
    if "gpu" in info:
        text += f" ({info['gpu']})"
    return text


# ------------------------------------------------------------------------------ the command line

def add_run_arguments(parser: argparse.ArgumentParser, repeats_help: str) -> None:
    """The options every benchmark suite takes."""
    parser.add_argument("--quick", action="store_true", help="smoke sizes and few repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="append the rows to DIR/results.jsonl and redraw "
                             "DIR/<suite>_<device>.md and .png from it (default: print the "
                             "markdown table, write nothing)")
    parser.add_argument("--repeats", type=int, help=f"samples per variant ({repeats_help})")
    parser.add_argument("--only", metavar="REGEX",
                        help="run only the cases whose key matches (re.search); see --list")
    parser.add_argument("--list", action="store_true",
                        help="list the case keys with a line each and exit")
    parser.add_argument("--note", default="", metavar="TEXT",
                        help="a sentence for the report, e.g. 'The machine was shared.'")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads for this run (default: torch's default, recorded "
                             "either way); 1 steadies the medians on a shared machine, where "
                             "threads waiting for each other at every barrier dominate")


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (nothing when ``n`` is None), then restored:
    ``--threads`` changes the run, not the caller's process."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"--threads must be >= 1 (got {n})")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def usage_error(prog: str, message: str) -> None:
    """Print ``prog: error: message`` (one line) and exit with status 2, as argparse does."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def select_keys(prog: str, catalogue: Sequence[Tuple[str, str]],
                only: Optional[str]) -> List[str]:
    """The keys of ``catalogue`` ([(key, description)]) that ``only`` matches (all without it).

    A pattern that is not a regular expression or matches no key is a usage error that lists
    the keys: nothing has been built or written when it is raised."""
    keys = [key for key, _ in catalogue]
    if not only:
        return keys
    try:
        pattern = re.compile(only)
    except re.error as e:
        usage_error(prog, f"--only {only!r} is not a regular expression ({e})")
    chosen = [key for key in keys if pattern.search(key)]
    if not chosen:
        usage_error(prog, f"--only {only!r} matches no case; cases: {', '.join(keys)}")
    return chosen


def print_catalogue(catalogue: Sequence[Tuple[str, str]]) -> None:
    """``--list``: one line per case, its key then its description."""
    width = max(len(key) for key, _ in catalogue)
    for key, description in catalogue:
        print(f"{key:<{width}}  {description}")


def _fmt(value: Optional[float], spec: str) -> str:
    """``value`` formatted with ``spec``, but whole numbers from 100 on (no 5.7e+03)."""
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else format(value, spec)
