"""What a benchmark run leaves behind: :class:`Recorder` turns each case's result into rows
(:mod:`.table`), says which medians are noisy, and at the end prints the run's markdown table;
with ``--out DIR`` it also appends the rows to DIR/results.jsonl (as each case ends, so a long
run that is stopped keeps what it measured) and redraws DIR/<suite>_<device>.md and .png.
Without ``--out`` nothing is written anywhere.
"""
from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..info import machine_info
from .harness import describe_machine
from .table import append_rows, device_label, noisy_warnings, render_markdown, rows_from_result


class Recorder:
    """Collects one command run's rows (``suite``: ops or chains; ``command``: as typed)."""

    def __init__(self, suite: str, device: str, out: Optional[Path], command: str,
                 note: str = "", label: str = "bench"):
        info = machine_info(device)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.suite, self.device, self.out, self.label = suite, device, out, label
        self.context = dict(
            commit=info["git"], machine=describe_machine(info), torch=info["torch"],
            timestamp=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            run=f"{now.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}", command=command,
            run_note=note)
        self.rows: List[Dict[str, Any]] = []

    def add(self, result: Dict[str, Any], extra: Optional[Dict[str, Dict[str, Any]]] = None):
        """Record one case's :func:`~.harness.run_case` result (``extra``: see
        :func:`.table.rows_from_result`)."""
        rows = rows_from_result(self.suite, result, self.context, extra)
        for line in noisy_warnings(rows):
            print(f"[{self.label}] {line}", file=sys.stderr, flush=True)
        if self.out is not None:
            append_rows(self.out, rows)
        self.rows += rows
        return rows

    def finish(self) -> Dict[str, Path]:
        """Print this run's markdown; with ``--out``, redraw the folder's files from its table.
        Returns the paths written ({} without ``--out``)."""
        from .plot import redraw, suite_title
        title = suite_title(self.suite, device_label(self.device)) + " (this run)"
        print(render_markdown(self.rows, title))
        if self.out is None:
            return {}
        written = redraw(self.out)
        stem = Path(self.out) / f"{self.suite}_{device_label(self.device)}"
        paths = {"table": Path(self.out) / "results.jsonl", "md": stem.with_suffix(".md"),
                 "png": stem.with_suffix(".png")}
        print("wrote " + ", ".join(str(p) for p in [paths["table"]] + written), file=sys.stderr)
        return paths
