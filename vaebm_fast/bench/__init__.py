"""Benchmarks: :mod:`.harness` (the one timing harness and the options every suite takes),
:mod:`.ops` (the hot-path ops), :mod:`.chains` (Langevin updates, steps and whole chains against
plain PyTorch, the official-style loop and torch.compile), :mod:`.scaling` (training and
sampling on 1, 2, 3 processes), :mod:`.table` (the results table and its markdown),
:mod:`.plot` (the charts) and :mod:`.record` (what a run writes).

Run them with ``vaebm-fast bench ops|chains|scaling [--list] [--quick] [--only REGEX]
[--out DIR]``
(without ``--out`` a run prints its markdown table and writes nothing) and redraw a folder with
``vaebm-fast bench plot DIR`` (method: benchmarks/README.md). Importing this package imports
nothing heavy and queries no device.
"""
