"""Benchmarks (not part of the installed package): ``benchmarks.harness`` times variants;
``benchmarks.bench_ops`` benchmarks the hot-path ops. See benchmarks/README.md."""
