"""Scaling benchmark; the code lives in :mod:`vaebm_fast.bench.scaling`.

    python -m benchmarks.bench_scaling [--quick] [--processes 1,2]  (= vaebm-fast bench scaling ...)
    python benchmarks/bench_scaling.py --quick                      (script form)
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make vaebm_fast importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebm_fast.bench.scaling import *  # noqa: F403
from vaebm_fast.bench.scaling import main

if __name__ == "__main__":
    main()
