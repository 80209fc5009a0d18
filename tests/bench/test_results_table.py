"""What `vaebm-fast bench` writes, and when: --only is checked before any work, --list,
nothing written without --out, --out appends rows to one table, the plotter redraws from that
table alone, noisy medians are flagged. Tiny cases only (--quick, the replay_gather op, the
toy update)."""
import json
import struct
import time

import pytest

from vaebm_fast.bench import chains, harness, ops, table
from vaebm_fast.bench.plot import draw_chart
from vaebm_fast.bench.record import Recorder
from vaebm_fast.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = harness.Path(__file__).resolve().parents[2]


def _tree(path):
    return sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*"))


@pytest.mark.parametrize("suite", ["ops", "chains"])
@pytest.mark.parametrize("pattern, message", [("no_such_case", "matches no case; cases: "),
                                              ("(", "is not a regular expression")])
def test_only_is_checked_before_any_work(suite, pattern, message, tmp_path, capsys,
                                         monkeypatch):
    if suite == "ops":  # nothing may be built before the check
        monkeypatch.setattr(ops, "CASES", {k: (d, None) for k, (d, _) in ops.CASES.items()})
    else:
        monkeypatch.setattr(chains, "toy_setup", None)
    out = tmp_path / "results"
    assert cli_main(["bench", suite, "--quick", "--only", pattern, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert err.startswith(f"vaebm-fast bench {suite}: error: --only {pattern!r}")
    if pattern != "(":
        keys = [k for k, _ in (ops.catalogue() if suite == "ops"
                               else chains.catalogue(chains.QUICK))]
        assert err.endswith(", ".join(keys))
    assert not out.exists()


def test_only_builds_just_the_chosen_case(tmp_path, monkeypatch, capsys):
    def refuse(sizes, device):
        raise AssertionError("a case that was not chosen was built")
    cases = {k: (d, build if k == "replay_gather_cifar10" else refuse)
             for k, (d, build) in ops.CASES.items()}
    monkeypatch.setattr(ops, "CASES", cases)
    assert cli_main(["bench", "ops", "--quick", "--only", "replay", "--repeats", "1"]) == 0
    assert "(`replay_gather_cifar10`)" in capsys.readouterr().out


@pytest.mark.parametrize("suite, catalogue", [("ops", ops.catalogue()),
                                              ("chains", chains.catalogue(chains.FULL))])
def test_list_prints_every_key_with_a_line(suite, catalogue, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["bench", suite, "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [key for key, _ in catalogue]
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # a description on each
    assert "chain16_cifar_b64" in [k for k, _ in chains.catalogue(chains.FULL)]
    assert list(tmp_path.iterdir()) == []


def test_help_names_the_command(capsys):
    assert cli_main(["bench", "ops", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: vaebm-fast bench ops ")


def test_no_file_is_written_without_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = ROOT / "benchmarks" / "results"
    before = _tree(results)
    assert cli_main(["bench", "ops", "--quick", "--only", "replay", "--repeats", "1"]) == 0
    assert "| plain PyTorch (baseline) |" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [] and _tree(results) == before


def test_out_appends_each_run_to_one_table(tmp_path):
    for _ in range(2):
        ops.main(["--quick", "--only", "replay", "--repeats", "1", "--out", str(tmp_path)])
        time.sleep(1.1)  # distinct timestamps
    chains.main(["--quick", "--only", "update_toy", "--repeats", "1", "--out", str(tmp_path)])
    rows = table.read_rows(tmp_path)
    ops_rows = [r for r in rows if r["suite"] == "ops"]
    runs = list(dict.fromkeys(r["run"] for r in ops_rows))
    assert len(runs) == 2  # both runs kept
    assert [r["variant"] for r in ops_rows if r["run"] == runs[0]] == \
        [r["variant"] for r in ops_rows if r["run"] == runs[1]]
    for r in rows:
        for field in ("suite", "case", "variant", "role", "device", "size", "median_s", "q1_s",
                      "q3_s", "samples", "peak_mb", "commit", "machine", "torch", "timestamp",
                      "command"):
            assert field in r, field
    # One markdown and chart per suite and device, each case from its latest run.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chains_cpu.md", "chains_cpu.png", "ops_cpu.md", "ops_cpu.png", "results.jsonl"]
    text = (tmp_path / "ops_cpu.md").read_text()
    assert text.count("(`replay_gather_cifar10`)") == 1
    latest = [r for r in ops_rows if r["run"] == runs[1]][0]
    assert latest["timestamp"] in text and ops_rows[0]["timestamp"] not in text


def _rows(medians, iqr=0.1, case="c", roles=None):
    """Table rows of one case with the given medians (seconds), IQR as a share of each."""
    roles = roles or ["baseline"] + ["ours"] * (len(medians) - 1)
    rows = []
    for i, (median, role) in enumerate(zip(medians, roles)):
        rows.append(dict(
            suite="ops", case=case, title=f"case {case}", size="4 elements", baseline="v0",
            device="cpu", variant=f"v{i}", role=role, median_s=median,
            q1_s=median * (1 - iqr / 2), q3_s=median * (1 + iqr / 2), samples=3,
            samples_s=[median] * 3, bytes=None, flops=None, peak_mb=None, skipped=None,
            note="", commit="abc1234", machine="a test machine", torch="2", run="r1",
            timestamp="2026-01-01T00:00:00Z", command="vaebm-fast bench ops", run_note=""))
    return rows


def test_plot_redraws_from_the_table_alone(tmp_path, capsys):
    rows = _rows([4e-3, 1e-3]) + _rows([2e-3, 5e-3], iqr=0.6, case="d")
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli_main(["bench", "plot", str(tmp_path)]) == 0
    text = (tmp_path / "ops_cpu.md").read_text()
    assert "| v1 | ours | 1 | 0.1 | 4× |" in text  # 4 ms / 1 ms against the baseline v0
    assert "| v0 (baseline) | baseline | 2 | 1.2 | 1× |" in text
    overview = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert overview["| `c`"].endswith("| v1 | 1 | v0 | 4 | 4× | — |")
    # A baseline faster than our best is named, not hidden behind a ratio.
    assert overview["| `d`"].endswith("| 0.4× | v0 (2 ms) |")
    flagged = [line.split(" |")[0] for line in text.splitlines()
               if line.startswith("| v") and line.endswith("**noisy** |")]
    assert flagged == ["| v0 (baseline)", "| v1"]  # case d's IQRs are 60% of the medians
    png = (tmp_path / "ops_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["bench", "plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaebm-fast bench plot: error: ") and "no results table" in err


def _png_size(path):
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_chart_grows_with_the_number_of_bars(tmp_path):
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    draw_chart(_rows([1e-3, 2e-3]), few, "two bars")
    draw_chart(_rows([1e-3 * (i + 1) for i in range(24)]), many, "24 bars")
    (w_few, h_few), (w_many, h_many) = _png_size(few), _png_size(many)
    assert h_many > 2 * h_few and abs(w_many - w_few) < 0.2 * w_few


def test_noisy_medians_are_flagged_in_the_table_and_on_stderr(capsys):
    calls = [0]

    # Sleeps of tens of ms: a loaded machine's scheduling jitter (a few ms) must not make the
    # steady variant look noisy.
    def alternating():  # 10 ms, 100 ms, 10 ms, ...: an IQR far above a quarter of the median
        calls[0] += 1
        time.sleep(0.01 if calls[0] % 2 else 0.1)

    case = harness.Case("jumpy", "a jumpy case", "", [
        harness.Variant("plain PyTorch", alternating, role="baseline"),
        harness.Variant("steady", lambda: time.sleep(0.04))], baseline="plain PyTorch",
        ceiling_numel=None, size="none")
    recorder = Recorder("ops", "cpu", None, "test")
    rows = recorder.add(harness.run_case(case, repeats=4, warmup=1, min_sample_s=0.0))
    assert [table.is_noisy(r) for r in rows] == [True, False]
    err = capsys.readouterr().err
    assert "noisy median: jumpy / plain PyTorch" in err and "steady" not in err
    assert recorder.finish() == {}
    out = capsys.readouterr().out
    assert [line.split(" |")[0] for line in out.splitlines()
            if line.endswith("**noisy** |")] == ["| plain PyTorch (baseline)"]


def test_threads_applies_to_the_run_only(tmp_path, capsys):
    import torch
    before = torch.get_num_threads()
    ops.main(["--quick", "--only", "replay", "--repeats", "1", "--threads", "1",
              "--out", str(tmp_path)])
    assert torch.get_num_threads() == before
    rows = table.read_rows(tmp_path)
    assert all("with 1 thread," in r["machine"] for r in rows)
    assert rows[0]["command"].endswith("--threads 1 --out " + str(tmp_path))
