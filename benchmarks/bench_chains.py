"""Chain benchmarks; the code lives in :mod:`vaebm_fast.bench.chains`.

    python -m benchmarks.bench_chains [--quick] [--only REGEX]   (= vaebm-fast bench chains ...)
    python benchmarks/bench_chains.py --quick                    (script form)
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make vaebm_fast importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaebm_fast.bench.chains import *  # noqa: F403
from vaebm_fast.bench.chains import main, official_style_chain  # noqa: F401

if __name__ == "__main__":
    main()
