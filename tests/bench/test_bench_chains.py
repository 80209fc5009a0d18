"""The chain benchmark, smoke-tested: a --quick run of the toy and IGEBM setups into a temporary
directory, the rows it appends to the results table, the official-style and plain PyTorch
loops' samples, and the `vaebm-fast bench` subcommand. No timing assertions
(docs/design.md#measuring-speed)."""
import time

import pytest
import torch

from vaebm_fast.bench import chains
from vaebm_fast.bench.table import PLAIN, read_rows
from vaebm_fast.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

ONLY = "toy|igebm"
CASES = ["update_toy", "step_toy", "chain16_toy", "update_igebm", "step_igebm", "chain16_igebm"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("chains")
        paths = chains.main(["--quick", "--only", ONLY, "--repeats", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, paths, read_rows(out)


def test_writes_the_table_markdown_and_png(quick_run):
    out, paths, _ = quick_run
    assert sorted(p.name for p in out.iterdir()) == [
        "chains_cpu.md", "chains_cpu.png", "results.jsonl"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cases_variants_and_roles(quick_run):
    _, paths, rows = quick_run
    assert list(dict.fromkeys(r["case"] for r in rows)) == CASES
    text = paths["md"].read_text()
    for key in CASES:
        case = [r for r in rows if r["case"] == key]
        by_name = {r["variant"]: r for r in case}
        # Every variant is either timed or listed as not run, with a reason.
        assert sorted(n for n in by_name if n != "copy_ (ceiling)") == sorted(chains.VARIANTS)
        assert all(r["skipped"] for r in case if r["median_s"] is None)
        # Speed-ups are against plain PyTorch; our eager sampler is a reference, not a baseline.
        assert {r["baseline"] for r in case} == {PLAIN}
        assert by_name[PLAIN]["role"] == "baseline" and by_name[PLAIN]["median_s"]
        assert by_name["official-style"]["role"] == "baseline"
        assert by_name["torch.compile"]["role"] == "baseline"
        assert by_name["eager reference"]["role"] == "reference"
        assert by_name["fused"]["role"] == by_name["fast"]["role"] == "ours"
        assert by_name["fast + CUDA graph"]["skipped"]  # CPU run
        assert "CUDA device" in by_name["fast + step graph"]["skipped"]
        if key.startswith("chain"):  # a FastSampler failure is reported, not raised
            assert by_name["fast"]["median_s"], by_name["fast"]["skipped"]
        assert f"(`{key}`)" in text
        for r in case:
            assert r["steps_per_call"] == (16 if key.startswith("chain16") else 1)
            if r["median_s"] and r["role"] != "ceiling":
                assert r["peak_mb"] is not None
                assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["samples"] == 1
        assert ("copy_ (ceiling)" in by_name) == key.startswith("update")
    assert f"speed-up vs {PLAIN}" in text and "vs official-style" in text


def _toy(batch=16):
    sizes = dict(chains.QUICK, toy_batch=batch)
    return chains.toy_setup(sizes, "cpu")


class CountingEnergy(torch.nn.Module):
    def __init__(self, energy):
        super().__init__()
        self.inner, self.grad_calls = energy, 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_calls += 1
        return self.inner(x)


@pytest.mark.parametrize("setup_name", ["toy", "igebm", "cifar"])
def test_official_style_chain_matches_the_sampler_in_shape_and_steps(setup_name):
    from vaebm_fast.sampling import LangevinSampler
    sizes = dict(chains.QUICK, toy_batch=8, igebm_batch=3)
    setup = {"toy": lambda: chains.toy_setup(sizes, "cpu"),
             "igebm": lambda: chains.igebm_setup(sizes, "cpu"),
             "cifar": lambda: chains.cifar_setup(sizes, 2, "cpu")}[setup_name]()
    k = 3
    energy = CountingEnergy(setup.energy)
    replay = chains._official_replay(setup)
    x_off = chains.official_style_chain(
        energy, setup.generator, setup.batch, n_steps=k, replay=replay,
        replay_capacity=setup.replay_capacity, reuse_prob=setup.reuse_prob, **setup.sampler)
    assert energy.grad_calls == k  # one gradient of the potential per step
    counted = CountingEnergy(setup.energy)
    x_ours = LangevinSampler(counted, setup.generator, n_steps=k, backend="native",
                             **setup.sampler).sample(setup.batch, seed=0)
    assert counted.grad_calls == k
    assert x_off.shape == x_ours.shape and x_off.dtype == x_ours.dtype
    assert torch.isfinite(x_off).all()
    if setup.space == "data":
        assert 0 <= x_off.min() and x_off.max() <= 1
        assert len(replay) == setup.replay_capacity  # pushed back, trimmed FIFO
    # The official loop leaves no gradients behind and restores the VAE's flags.
    assert all(p.grad is None for p in setup.energy.parameters())
    if setup.generator is not None:
        assert all(p.grad is None for p in setup.generator.parameters())


@pytest.mark.parametrize("setup_name", ["toy", "igebm", "cifar"])
def test_official_style_chain_makes_the_samplers_updates_without_noise(setup_name):
    """With the noise off and the same start states, the official-style loop's steps are our
    sampler's steps, so the speed-ups over it compare equal work. The CIFAR setup's loop
    differentiates the official potential (the hierarchical prior's log-sigma terms and the
    likelihood's second sigma): it equals our sampler with potential="official"."""
    from vaebm_fast.sampling import LangevinSampler
    sizes = dict(chains.QUICK, toy_batch=8, igebm_batch=3)
    setup = {"toy": lambda: chains.toy_setup(sizes, "cpu"),
             "igebm": lambda: chains.igebm_setup(sizes, "cpu"),
             "cifar": lambda: chains.cifar_setup(sizes, 2, "cpu")}[setup_name]()
    # The untrained models' gradients are tiny at the benchmark's step sizes; larger steps (and
    # in pixel space a clip below the gradients, so the clip and the [0, 1] clamp both act)
    # make the update large enough to compare.
    overrides = {"toy": dict(step_size=0.05), "igebm": dict(step_size=2e4, grad_clip=1e-6),
                 "cifar": dict(step_size=1e-2)}
    kw = dict(setup.sampler, noise_scale=0.0, **overrides[setup_name])
    ours = dict(kw, potential="official") if setup_name == "cifar" else kw
    for k in (1, 3):
        torch.manual_seed(0)
        x_official = chains.official_style_chain(setup.energy, setup.generator, setup.batch,
                                                 n_steps=k, **kw)
        torch.manual_seed(0)  # the loop's start draws, in its order
        if setup.space == "data":
            starts = torch.rand(setup.batch, *setup.state_shapes()[0])
        else:
            starts = [torch.randn(setup.batch, *s) for s in setup.state_shapes()]
        x_start = LangevinSampler(setup.energy, setup.generator, n_steps=0,
                                  **kw).sample(starts, seed=0)
        x_ours = LangevinSampler(setup.energy, setup.generator, n_steps=k, backend="eager",
                                 **ours).sample(starts, seed=0)
        update = x_ours - x_start
        scale = update.abs().max().item()
        assert scale > 1e-3
        torch.testing.assert_close(x_official - x_start, update, rtol=0, atol=1e-4 * scale)


def test_compile_options_reach_torch_compile_and_the_note(monkeypatch):
    # --compile-mode reduce-overhead (the GPU run's torch.compile baseline) is passed through
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    options = {"backend": "inductor", "mode": "reduce-overhead"}
    fn, note = chains._compile_variant(_toy(), "step", 1, 60.0, options)
    assert seen == [options] and fn is not None
    assert "torch.compile(step, backend='inductor', mode='reduce-overhead')" in note


def test_compile_skip_reason_and_timeout():
    setup = _toy()
    fn, why = chains._compile_variant(setup, "step", 1, 0.0, {"backend": "inductor"})
    assert fn is None and "--compile-timeout 0" in why
    # The alarm must interrupt the busy loop; the loop gives up after 10 s so that a broken
    # time_limit fails the test instead of hanging it.
    deadline = time.monotonic() + 10.0
    with pytest.raises(chains._Timeout):
        with chains.time_limit(0.05):
            while time.monotonic() < deadline:
                pass
            pytest.fail("time_limit(0.05) did not interrupt a 10 s busy loop")


def test_cli_bench_chains_quick_prints_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["bench", "chains", "--quick", "--only", "update_toy", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "(`update_toy`)" in out and f"| {PLAIN} (baseline) |" in out
    assert list(tmp_path.iterdir()) == []


def test_variants_selects_what_is_timed(tmp_path):
    # Minutes-long CIFAR chains are run for plain PyTorch vs FastSampler only: --variants fast.
    assert cli_main(["bench", "chains", "--quick", "--only", "chain16_toy", "--repeats", "1",
                     "--variants", "^fast$", "--out", str(tmp_path)]) == 0
    rows = read_rows(tmp_path)
    assert [r["variant"] for r in rows if r["median_s"]] == [PLAIN, "fast"]
    skipped = {r["variant"]: r["skipped"] for r in rows if not r["median_s"]}
    assert "not selected" in skipped["official-style"] and "not selected" in skipped["fused"]
    assert "not selected" in skipped["eager reference"]


def test_plain_step_makes_the_samplers_update_without_noise():
    """The plain PyTorch baseline computes the same step as our samplers (so the speed-ups
    compare equal work): with the noise off, one plain step from the same start states is the
    eager sampler's step."""
    from vaebm_fast.sampling import LangevinSampler, frozen
    setup = chains.toy_setup(dict(chains.QUICK, toy_batch=8), "cpu")
    setup.sampler = dict(setup.sampler, step_size=0.05, noise_scale=0.0)
    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(setup.batch, *s, generator=gen) for s in setup.state_shapes()]
    states = [s.clone() for s in starts]
    with frozen(setup.energy, setup.generator):
        chains.plain_step(setup)(states)
    want = LangevinSampler(setup.energy, setup.generator, n_steps=1, backend="eager",
                           **{**setup.sampler, "output": "sample"}).sample(
        [s.clone() for s in starts], seed=0, return_chain=True).states
    assert (states[0] - starts[0]).abs().max() > 1e-3
    for got, expected in zip(states, want):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_set_overrides_sizes():
    sizes = chains._parse_set(["cifar_batches=32,64", "cifar_channels=16"], chains.FULL)
    assert sizes["cifar_batches"] == (32, 64) and sizes["cifar_channels"] == 16
    with pytest.raises(SystemExit):
        chains._parse_set(["nope=1"], chains.FULL)
