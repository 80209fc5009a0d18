"""Compatibility shim: the harness lives in :mod:`vaebm_fast.bench.harness` (so the installed
``vaebm-fast bench`` command can use it)."""
from vaebm_fast.bench.harness import *  # noqa: F403
from vaebm_fast.bench.harness import describe_machine, render_markdown, save_chart  # noqa: F401
