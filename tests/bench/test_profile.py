"""The GPU idle share of a call (bench chains --profile): the interval arithmetic here; the
profiler itself needs a GPU."""
import pytest
import torch

from vaebm_fast.bench import chains
from vaebm_fast.bench.profile import busy_time, gpu_idle_share
from vaebm_fast.bench.table import render_markdown


def test_busy_time_is_the_union_and_span_is_first_start_to_last_end():
    assert busy_time([]) == (0.0, 0.0)
    assert busy_time([(0, 10)]) == (10, 10)
    # two streams overlapping, a gap of 5, a kernel inside another, unsorted input
    assert busy_time([(20, 30), (0, 10), (5, 15), (22, 25)]) == (25, 30)


def test_an_interval_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="ends before it starts"):
        busy_time([(5, 4)])


def test_idle_share_needs_cuda():
    assert gpu_idle_share(lambda: None, "cpu") == (None, "the GPU idle share needs a CUDA device")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_back_to_back_kernels_on_the_gpu_are_mostly_busy():
    x = torch.randn(1 << 24, device="cuda")

    def kernels():
        for _ in range(20):
            x.mul_(1.0001)
    share, note = gpu_idle_share(kernels, "cuda")
    assert share is not None and 0.0 <= share < 0.5, note


def test_profile_is_refused_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        chains.main(["--quick", "--profile", "--only", "chain16_toy"])
    assert exit_info.value.code == 2
    assert "--profile measures GPU idle time: it needs --device cuda" in capsys.readouterr().err


def test_table_shows_the_idle_share_when_profiled():
    row = dict(suite="chains", case="chain16_x", title="t", size="", baseline="plain PyTorch",
               device="cuda", variant="fast + CUDA graph", role="ours", median_s=0.01,
               q1_s=0.01, q3_s=0.01, samples=3, samples_s=[0.01] * 3, bytes=None, flops=None,
               peak_mb=None, skipped=None, note="", gpu_idle_share=0.031, commit="c",
               machine="m", torch="t", timestamp="2026-01-01T00:00:00Z", run="r", command="x",
               run_note="")
    text = render_markdown([row])
    assert "| GPU idle % |" in text and "| 3.1 |" in text
