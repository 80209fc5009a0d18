"""Benchmarks: :mod:`.harness` (the one timing harness), :mod:`.ops` (the hot-path ops) and
:mod:`.chains` (Langevin steps and whole chains against eager and official-style loops).

Run them with ``vaebm-fast bench ops|chains [--quick] [--device cuda] [--only REGEX]`` or
``python -m benchmarks.bench_ops`` / ``bench_chains`` from a checkout; results go to
``benchmarks/results/`` (method: benchmarks/README.md). Importing this package imports nothing
heavy and queries no device.
"""
