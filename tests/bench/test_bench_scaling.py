"""The scaling benchmark, smoke-tested on the CPU with gloo: a ``--quick`` run of the toy
workloads on 1 and 2 processes, the rows and tables it writes, and its checks and errors. No
timing assertions (benchmarks measure, tests do not)."""
from dataclasses import replace

import pytest
import torch

from vaebm_fast.bench import scaling
from vaebm_fast.bench.table import read_rows
from vaebm_fast.cli import main as cli_main
from vaebm_fast.info import machine_info


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    paths = scaling.main(["--quick", "--processes", "1,2", "--only", "toy", "--out", str(out)])
    return out, paths, read_rows(out)


def test_writes_the_table_markdown_and_png(quick_run):
    out, paths, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == ["results.jsonl", "scaling_cpu.md",
                                                     "scaling_cpu.png"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_row_per_process_count_with_its_rate(quick_run):
    _, _, rows = quick_run
    cores = machine_info("cpu")["usable_cores"]
    whole = [(f"1 process, {cores} threads", "baseline")] if cores > 1 else []
    expected = [("1 process", "baseline"), *whole, ("2 processes", "ours")]
    assert [(r["case"], r["variant"], r["role"]) for r in rows] == [
        (case, *variant) for case in ("train_toy", "sample_toy") for variant in expected]
    for r in rows:
        assert r["suite"] == "scaling" and r["baseline"] == "1 process"
        assert r["median_s"] > 0 and r["samples"] == scaling.TIMING_QUICK["repeats"]
        assert "1 torch thread per process" in r["run_note"]
    work = {r["case"]: (r["items_per_call"], r["item"]) for r in rows}
    assert work == {"train_toy": (scaling.QUICK["train_toy"].steps, "steps"),
                    "sample_toy": (scaling.QUICK["sample_toy"].samples, "samples")}


def test_markdown_shows_rates_and_the_speed_up_against_one_process(quick_run):
    out, _, rows = quick_run
    text = (out / "scaling_cpu.md").read_text()
    assert "# Scaling with processes (torch.distributed) on cpu" in text
    assert "| steps/s |" in text and "| samples/s |" in text
    assert "speed-up vs 1 process" in text
    train = next(r for r in rows if r["case"] == "train_toy" and r["variant"] == "1 process")
    rate = train["items_per_call"] / train["median_s"]
    assert f"{rate:.3g}" in text or f"{rate:,.0f}" in text


def test_one_process_with_every_core_is_a_second_baseline():
    assert [g.name for g in scaling.groups([1, 2, 3], 1, 4)] == [
        "1 process", "1 process, 4 threads", "2 processes", "3 processes"]
    assert [g.name for g in scaling.groups([1, 2], 2, 2)] == ["1 process", "2 processes"]


def test_groups_that_cannot_run_are_reported_with_the_reason():
    odd = replace(scaling.WORKLOADS["train_toy"], batch=10)
    assert "does not split into 3 equal parts" in scaling._skip_reason(odd, 3, "cpu")
    assert scaling._skip_reason(odd, 2, "cpu") is None
    # sampling shards any number of samples round-robin
    assert scaling._skip_reason(scaling.WORKLOADS["sample_toy"], 7, "cpu") is None


def test_disagreement_catches_different_samples_and_weights():
    x = torch.randn(6, 2)
    assert scaling.disagreement(x, x.clone(), "sample") is None
    y = x.clone()
    y[3, 1] = torch.nextafter(y[3, 1], torch.tensor(9.0))  # one ulp: sampling is bitwise
    assert scaling.disagreement(x, y, "sample") == "samples differ from one process's"
    start = torch.zeros(50)
    end = start + torch.linspace(-1, 1, 50)  # how far the round moved the weights: norm 4.2
    rounding = end.clone()
    rounding[7] += 0.03  # one weight off by a good part of a step: 0.7% of the move
    assert scaling.disagreement((start, end), (start, rounding), "train") is None
    wrong = end + 0.1 * torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert "of how far the round moved them (allowed: 1%)" in scaling.disagreement(
        (start, end), (start, wrong), "train")
    assert "starts from differ" in scaling.disagreement((start, end), (start + 1, end), "train")


def test_a_process_that_fails_to_build_is_reported_with_its_traceback():
    broken = replace(scaling.QUICK["sample_toy"], dataset="no-such-preset")
    with pytest.raises(RuntimeError, match="(?s)2-process group failed.*no preset for "
                                           "dataset 'no-such-preset'"):
        scaling.ProcessGroupPool(2, broken)


@pytest.mark.parametrize("argv, message", [
    (["--processes", "2,3"], "--processes must include 1 (the baseline)"),
    (["--processes", "1,two"], "--processes takes counts separated by commas"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--device", "tpu"], "--device must be cpu or cuda"),
    (["--only", "nothing"], "matches no case"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    assert cli_main(["bench", "scaling", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("vaebm-fast bench scaling")


def test_list_names_every_workload(capsys):
    assert scaling.main(["--list"]) == {}
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(scaling.WORKLOADS)
