"""The op benchmark harness, smoke-tested: a ``--quick`` run into a temporary directory, then
the structure of its JSON and markdown. No timing assertions (docs/design.md#measuring-speed:
benchmarks measure, tests do not)."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CASES = ["langevin_65536", "langevin_cifar10", "philox_normal_65536", "power_iteration_cifar32",
         "swish_65536", "ebm_block_tail", "nvae_cell_tail", "affine_swish",
         "replay_gather_cifar10"]


@pytest.fixture(scope="module")
def harness():
    from vaebm_fast.bench import harness, ops as bench_ops
    yield bench_ops, harness


def test_benchmarks_entry_points_reexport_the_package():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        from benchmarks import bench_chains, bench_ops
        from vaebm_fast.bench import chains, ops
        assert bench_ops.main is ops.main and bench_chains.main is chains.main


@pytest.fixture(scope="module")
def quick_run(harness, tmp_path_factory):
    bench_ops, _ = harness
    out = tmp_path_factory.mktemp("bench")
    paths = bench_ops.main(["--quick", "--out", str(out)])
    return out, paths, json.loads(paths["json"].read_text())


def test_writes_json_markdown_and_png(quick_run):
    out, paths, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == [
        "ops_cpu_quick.json", "ops_cpu_quick.md", "ops_cpu_quick.png"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_names_the_machine_and_settings(quick_run):
    _, _, report = quick_run
    machine = report["machine"]
    assert set(machine) == {"cpu", "cpu_count", "usable_cores", "torch", "torch_threads",
                            "python", "platform", "device", "git"}  # + "gpu" on CUDA
    assert machine["cpu"] and machine["usable_cores"] >= 1
    assert machine["torch"] == torch.__version__
    assert machine["torch_threads"] == torch.get_num_threads()  # left at the default
    assert machine["device"] == "cpu"
    assert report["settings"]["quick"] is True
    assert [case["key"] for case in report["cases"]] == CASES


@pytest.mark.parametrize("index", range(len(CASES)))
def test_each_case_has_baseline_ceiling_and_consistent_stats(quick_run, index):
    _, _, report = quick_run
    case = report["cases"][index]
    rows = {row["name"]: row for row in case["variants"]}
    roles = [row["role"] for row in case["variants"]]
    assert roles.count("baseline") == 1 and roles.count("ceiling") == 1
    assert rows[case["baseline"]]["role"] == "baseline"
    assert rows[case["baseline"]]["speedup_vs_baseline"] == 1.0
    ceiling = rows["copy_ (ceiling)"]
    assert ceiling["bytes"] == 8 * case["ceiling_numel"]  # fp32 read + write
    assert math.isclose(case["ceiling_gbps"], ceiling["gbps"])
    for row in case["variants"]:
        assert len(row["samples_s"]) == case["repeats"] == report["settings"]["repeats"]
        assert 0 < row["q1_s"] <= row["median_s"] <= row["q3_s"]
        assert math.isclose(row["iqr_s"], row["q3_s"] - row["q1_s"])
        assert math.isclose(row["speedup_vs_baseline"],
                            rows[case["baseline"]]["median_s"] / row["median_s"])
        if row["bytes"] is None:
            assert row["gbps"] is None and row["fraction_of_copy_bw"] is None
        else:
            assert math.isclose(row["gbps"], row["bytes"] / row["median_s"] / 1e9)
            assert math.isclose(row["fraction_of_copy_bw"], row["gbps"] / case["ceiling_gbps"])


def test_byte_counts(quick_run):
    _, _, report = quick_run
    cases = {case["key"]: case for case in report["cases"]}
    for key in ("langevin_65536", "langevin_cifar10"):
        case = cases[key]
        rows = {row["name"]: row for row in case["variants"]}
        numel = case["ceiling_numel"]
        assert rows["torch eager"]["bytes"] == 56 * numel
        assert rows["eager reference"]["bytes"] is None
        # Without the library, native is reported as skipped, with the reason (a failure
        # under VAEBM_FAST_REQUIRE_NATIVE=1). Triton on the CPU is never timed.
        assert "native" in rows or os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") != "1"
        if "native" in rows:
            assert rows["native"]["bytes"] == 12 * numel
        else:
            assert "native" in [s["name"] for s in case["skipped"]]
    power = {row["name"].split(" (")[0]: row for row in cases["power_iteration_cifar32"]["variants"]
             if row["role"] != "ceiling"}
    eager, loop = power["eager spectral_norms"], power["per-layer loop"]
    assert eager["bytes"] == loop["bytes"]
    assert eager["flops"] == eager["bytes"] // 2  # 2 FLOPs per 4-byte weight read
    # 4 iterations: eager reads W 9 times, native 5 times (4 FLOPs per weight per fused pass).
    if "native spectral_norms" in power:
        native = power["native spectral_norms"]
        assert native["bytes"] * 9 == eager["bytes"] * 5
        assert native["flops"] == 16 * native["bytes"] // (5 * 4)
    else:
        assert "native spectral_norms" in [
            s["name"].split(" (")[0] for s in cases["power_iteration_cifar32"]["skipped"]]


def test_markdown_has_one_table_per_case(quick_run):
    _, paths, report = quick_run
    text = paths["md"].read_text()
    assert report["machine"]["cpu"] in text
    for case in report["cases"]:
        section = text.split(f"## {case['title']}\n", 1)[1].split("\n## ", 1)[0]
        table = [line for line in section.splitlines() if line.startswith("|")]
        assert f"speed-up vs {case['baseline']}" in table[0] and "median ms" in table[0]
        assert set(table[1]) <= set("|-")
        assert len(table) == 2 + len(case["variants"])
        assert any(line.startswith(f"| {case['baseline']} (baseline) |") for line in table)


def test_run_case_rejects_unknown_baseline(harness):
    _, h = harness
    case = h.Case("k", "t", "d", [h.Variant("a", lambda: None)], baseline="b", ceiling_numel=4)
    with pytest.raises(ValueError, match="baseline 'b'"):
        h.run_case(case)
