"""How much of a call the GPU spends idle (``vaebm-fast bench chains --profile``).

One call of a variant runs under ``torch.profiler`` with CUDA activity recorded; the device
activities it records (kernels, copies, sets, including the nodes of a replayed CUDA graph)
are intervals on the GPU's clock. Their union is the time the GPU was busy; the span from the
first activity's start to the last one's end is the call as the GPU saw it. The idle share is
``1 - busy / span``: the gaps between kernels (launch latency, host work the GPU waited for),
which a CUDA graph is meant to close. The share ignores the time before the first kernel and
after the last one (the host's own overhead around the call), which the per-call medians
already contain.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple

import torch

__all__ = ["busy_time", "gpu_idle_share"]


def busy_time(intervals: Iterable[Tuple[float, float]]) -> Tuple[float, float]:
    """(length of the union of ``intervals`` [(start, end)], span from the first start to the
    last end); (0, 0) for none. Overlapping activities (concurrent streams) count once."""
    busy, span_start, span_end = 0.0, None, None
    run_start = run_end = None
    for start, end in sorted(intervals):
        if end < start:
            raise ValueError(f"an interval ends before it starts: ({start}, {end})")
        span_start = start if span_start is None else span_start
        span_end = end if span_end is None else max(span_end, end)
        if run_end is None or start > run_end:  # a gap: close the current run
            if run_end is not None:
                busy += run_end - run_start
            run_start, run_end = start, end
        else:
            run_end = max(run_end, end)
    if run_end is not None:
        busy += run_end - run_start
    return busy, (0.0 if span_start is None else span_end - span_start)


def gpu_idle_share(fn: Callable[[], object], device) -> Tuple[Optional[float], str]:
    """(idle share of one call of ``fn`` on CUDA ``device``, a note) or (None, why not)."""
    from torch.profiler import ProfilerActivity, profile
    device = torch.device(device)
    if device.type != "cuda":
        return None, "the GPU idle share needs a CUDA device"
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    intervals = [(e.time_range.start, e.time_range.end) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA]
    busy, span = busy_time(intervals)
    if not intervals or span <= 0:
        return None, "the profiler recorded no GPU activity in the call"
    return 1.0 - busy / span, (f"{len(intervals)} GPU activities, busy {busy / 1e3:.3g} ms of a "
                               f"{span / 1e3:.3g} ms span (one profiled call)")
