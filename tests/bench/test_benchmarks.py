"""The op benchmarks, smoke-tested: a ``--quick`` run into a temporary directory, then the rows
it appends to the results table and the markdown drawn from them. No timing assertions
(docs/design.md#measuring-speed: benchmarks measure, tests do not)."""
import math
import os
from pathlib import Path

import pytest
import torch

from vaebm_fast.bench import harness, ops
from vaebm_fast.bench.table import PLAIN, read_rows, speedup

ROOT = Path(__file__).resolve().parents[2]
CASES = list(ops.CASES)


def test_benchmarks_entry_points_reexport_the_package():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        from benchmarks import bench_chains, bench_ops, bench_scaling
        from vaebm_fast.bench import chains, scaling
        assert bench_ops.main is ops.main and bench_chains.main is chains.main
        assert bench_scaling.main is scaling.main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    paths = ops.main(["--quick", "--out", str(out)])
    return out, paths, read_rows(out)


def test_writes_the_table_markdown_and_png(quick_run):
    out, paths, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == ["ops_cpu.md", "ops_cpu.png",
                                                     "results.jsonl"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_name_the_machine_and_the_run(quick_run):
    _, _, rows = quick_run
    assert list(dict.fromkeys(r["case"] for r in rows)) == CASES
    for r in rows:
        assert r["suite"] == "ops" and r["device"] == "cpu" and r["torch"] == torch.__version__
        assert r["command"].startswith("vaebm-fast bench ops --quick")
        assert r["machine"] and r["timestamp"].endswith("Z") and r["size"]
    assert len({r["run"] for r in rows}) == 1


@pytest.mark.parametrize("key", CASES)
def test_each_case_has_one_baseline_a_ceiling_and_consistent_stats(quick_run, key):
    _, _, rows = quick_run
    case = [r for r in rows if r["case"] == key]
    timed = [r for r in case if r["median_s"]]
    baseline = case[0]["baseline"]
    by_name = {r["variant"]: r for r in timed}
    # The speed-ups are against what a user would otherwise run, never our eager reference.
    assert by_name[baseline]["role"] == "baseline"
    assert [r["role"] for r in timed].count("ceiling") == 1
    ceiling = by_name["copy_ (ceiling)"]
    assert ceiling["bytes"] == 8 * (ceiling["bytes"] // 8)  # fp32 read + write
    for r in timed:
        assert r["samples"] == len(r["samples_s"]) == 3
        assert 0 < r["q1_s"] <= r["median_s"] <= r["q3_s"]
        assert math.isclose(speedup(r, case, baseline),
                            by_name[baseline]["median_s"] / r["median_s"])
    for r in case:
        if r["median_s"] is None:
            assert r["skipped"]


def test_byte_counts(quick_run):
    _, _, rows = quick_run
    for key in ("langevin_flat", "langevin_cifar10"):
        case = {r["variant"]: r for r in rows if r["case"] == key}
        numel = case["copy_ (ceiling)"]["bytes"] // 8
        assert case[PLAIN]["bytes"] == 40 * numel
        assert case["eager reference"]["bytes"] is None
        assert case["eager reference"]["role"] == "reference"
        # Without the library, native is reported as skipped, with the reason (a failure
        # under VAEBM_FAST_REQUIRE_NATIVE=1). Triton on the CPU is never timed.
        assert case["native"]["median_s"] or os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") != "1"
        if case["native"]["median_s"]:
            assert case["native"]["bytes"] == 12 * numel
        else:
            assert case["native"]["skipped"]
        assert "interpreter" in case["triton"]["skipped"]
    power = {r["variant"].split(" (")[0]: r for r in rows
             if r["case"] == "power_iteration_cifar32" and r["role"] != "ceiling"}
    eager, loop = power["eager spectral_norms"], power[f"{PLAIN} per-layer loop"]
    assert eager["role"] == "reference" and loop["role"] == "baseline"
    assert eager["bytes"] == loop["bytes"]
    assert eager["flops"] == eager["bytes"] // 2  # 2 FLOPs per 4-byte weight read
    # 4 iterations: eager reads W 9 times, native 5 times (4 FLOPs per weight per fused pass).
    native = power["native spectral_norms"]
    if native["median_s"]:
        assert native["bytes"] * 9 == eager["bytes"] * 5
        assert native["flops"] == 16 * native["bytes"] // (5 * 4)


def test_markdown_has_one_table_per_case(quick_run):
    _, paths, rows = quick_run
    text = paths["md"].read_text()
    assert rows[0]["machine"] in text and rows[0]["command"] in text
    for key in CASES:
        case = [r for r in rows if r["case"] == key]
        section = text.split(f"(`{key}`)\n", 1)[1].split("\n## ", 1)[0]
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert f"speed-up vs {case[0]['baseline']}" in table[0] and "median ms" in table[0]
        assert set(table[1]) <= set("|-")
        assert len(table) == 2 + sum(1 for r in case if r["median_s"])
        assert any(line.startswith(f"| {case[0]['baseline']} (baseline) |") for line in table)


def test_run_case_rejects_unknown_or_non_baseline_baseline():
    case = harness.Case("k", "t", "d", [harness.Variant("a", lambda: None, role="baseline")],
                        baseline="b", ceiling_numel=4)
    with pytest.raises(ValueError, match="baseline 'b'"):
        harness.run_case(case)
    case = harness.Case("k", "t", "d", [harness.Variant("ref", lambda: None, role="reference")],
                        baseline="ref", ceiling_numel=4)
    with pytest.raises(ValueError, match="not against 'ref'"):
        harness.run_case(case)
