"""Compatibility shim: the harness lives in :mod:`vaebm_fast.bench.harness` (so the installed
``vaebm-fast bench`` command can use it); the results table in :mod:`vaebm_fast.bench.table`."""
from vaebm_fast.bench.harness import *  # noqa: F403
from vaebm_fast.bench.harness import describe_machine  # noqa: F401
from vaebm_fast.bench.table import read_rows, render_markdown  # noqa: F401
