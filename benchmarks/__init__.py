"""Benchmark entry points and results (not part of the installed package). The code is in
``vaebm_fast.bench`` (harness, ops, chains), which ``vaebm-fast bench`` runs; ``python -m
benchmarks.bench_ops`` / ``benchmarks.bench_chains`` are thin entry points. See README.md."""
