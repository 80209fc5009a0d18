"""Benchmark entry points and results (not part of the installed package). The code is in
``vaebm_fast.bench`` (harness, ops, chains, scaling), which ``vaebm-fast bench`` runs;
``python -m benchmarks.bench_ops`` / ``bench_chains`` / ``bench_scaling`` are thin entry
points. See README.md."""
