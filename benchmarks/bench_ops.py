"""Op benchmarks; the code lives in :mod:`vaebm_fast.bench.ops`.

    python -m benchmarks.bench_ops [--quick] [--only REGEX]    (= vaebm-fast bench ops ...)
    python benchmarks/bench_ops.py --quick                     (script form)
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make vaebm_fast importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebm_fast.bench.ops import *  # noqa: F403
from vaebm_fast.bench.ops import main

if __name__ == "__main__":
    main()
