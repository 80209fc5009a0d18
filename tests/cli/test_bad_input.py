"""The command line's bad-input table: every row is a command a user could type (or a config
file or checkpoint they could pass) that must fail with exit code 2 (1 for a diverged run), one
``error:`` line on stderr that names the problem, no traceback, and nothing written.

The commands run in-process through ``vaebm_fast.cli.main`` (fast); ``test_by_subprocess``
runs two of them as real processes. Placeholders in a command line:

    {new}    a fresh, empty run directory (must still hold no checkpoint afterwards)
    {run}    a finished toy run (25gaussians: vae.pt + ebm.pt), shared, never written to
    {runcopy} a copy of {run}'s vae.pt in a directory of its own (a resume target)
    {cfg}    a file holding the row's config text
    {wide}   a 25gaussians vae.pt of another width (hidden 64)
    {swiss}  a swissroll vae.pt (same architecture as {run}'s, other data set)
    {junk}   a file of zero bytes where a checkpoint should be
    {file}   a regular file where a directory should be
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from vaebm_fast.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TV = "train-vae --dataset 25gaussians --out {new} --steps 2"
TE = "train-ebm --out {new} --vae {run}/vae.pt --steps 2"
SA = "sample --out {new} --vae {run}/vae.pt --ebm {run}/ebm.pt --n 4 --steps 1"

# (id, command line, config file text or None, expected exit code, fragment of the error line)
CASES = [
    # --- the command and its arguments
    ("no-command", "", None, 2, "required: COMMAND"),
    ("unknown-command", "bogus", None, 2, "invalid choice: 'bogus'"),
    ("unknown-option", TV + " --bogus 1", None, 2, "unrecognized arguments: --bogus"),
    ("no-out", "train-vae --dataset 25gaussians", None, 2, "required: --out"),
    ("no-dataset", "train-vae --out {new}", None, 2, "required: --dataset"),
    ("unknown-dataset", "train-vae --dataset mnist --out {new}", None, 2,
     "invalid choice: 'mnist'"),
    ("abbreviated-flag", TV + " --step 3", None, 2, "unrecognized arguments: --step"),
    ("phantom-energy-arch", TE + " --energy-arch cifar32", None, 2,
     "unrecognized arguments: --energy-arch"),
    ("demo-no-out", "demo", None, 2, "required: --out"),
    ("demo-n-samples-0", "demo --out {new} --n-samples 0", None, 2,
     "--n-samples: must be an int >= 1"),
    # --- train-vae flags
    ("steps-abc", TV + " --steps abc", None, 2, "--steps: must be an int (got 'abc')"),
    ("steps-negative", TV + " --steps -1", None, 2, "(--steps) must be an integer >= 0"),
    ("steps-float", TV + " --steps 2.5", None, 2, "--steps: must be an int"),
    ("batch-size-0", TV + " --batch-size 0", None, 2, "(--batch-size) must be an integer >= 1"),
    ("lr-nan", TV + " --lr nan", None, 2, "(--lr) must be"),
    ("lr-inf", TV + " --lr inf", None, 2, "(--lr) must be"),
    ("lr-negative", TV + " --lr -1", None, 2, "(--lr) must be"),
    ("optimizer-sgd", TV + " --optimizer sgd", None, 2, "--optimizer: invalid choice: 'sgd'"),
    ("checkpoint-every-negative", TV + " --checkpoint-every -1", None, 2,
     "(--checkpoint-every) must be an integer >= 1"),
    ("checkpoint-every-0", TV + " --checkpoint-every 0", None, 2,
     "(--checkpoint-every) must be an integer >= 1"),
    ("kl-warmup-negative", TV + " --kl-warmup-fraction -1", None, 2,
     "(--kl-warmup-fraction) must be a number in [0, 1]"),
    ("kl-warmup-above-1", TV + " --kl-warmup-fraction 1.5", None, 2, "in [0, 1]"),
    ("seed-negative", TV + " --seed -1", None, 2, "--seed: must be an int in [0, "),
    ("seed-2**64", TV + " --seed 18446744073709551616", None, 2, "--seed: must be an int in"),
    # --- train-ebm flags (against a good vae.pt, into a fresh directory)
    ("step-size-0", TE + " --step-size 0", None, 2, "(--step-size) must be"),
    ("step-size-nan", TE + " --step-size nan", None, 2, "(--step-size) must be a number"),
    ("step-size-negative", TE + " --step-size -1", None, 2, "(--step-size) must be a number"),
    ("langevin-steps-negative", TE + " --langevin-steps -1", None, 2,
     "(--langevin-steps) must be an integer >= 0"),
    ("space-pixel", TE + " --space pixel", None, 2, "--space: invalid choice: 'pixel'"),
    ("sampler-slow", TE + " --sampler slow", None, 2, "--sampler: invalid choice: 'slow'"),
    ("replay-capacity-negative", TE + " --replay-capacity -1", None, 2,
     "(--replay-capacity) must be an integer >= 0"),
    ("noise-scale-negative", TE + " --noise-scale -1", None, 2, "(--noise-scale) must be a"),
    ("beta1-1", TE + " --beta1 1", None, 2, "(--beta1) must be a number in [0, 1)"),
    ("replay-max-p-2", TE + " --replay-max-p 2", None, 2, "(--replay-max-p) must be"),
    ("grad-clip-0", TE + " --grad-clip 0", None, 2, "(--grad-clip) must be"),
    ("ebm-seed-negative", TE + " --seed -1", None, 2, "--seed: must be an int in [0, "),
    # --- sample flags
    ("sample-n-0", SA + " --n 0", None, 2, "--n/--num-samples: must be an int >= 1"),
    ("sample-n-negative", SA + " --n -1", None, 2, "--n/--num-samples: must be an int >= 1"),
    ("sample-steps-negative", SA + " --steps -1", None, 2, "--steps: must be an int >= 0"),
    ("sample-step-size-0", SA + " --step-size 0", None, 2, "--step-size: must be a finite"),
    ("sample-step-size-nan", SA + " --step-size nan", None, 2, "--step-size: must be a finite"),
    ("sample-seed-negative", SA + " --seed -1", None, 2, "--seed: must be an int in [0, "),
    ("sample-no-resume", SA + " --no-resume", None, 2, "unrecognized arguments: --no-resume"),
    # --- --config files
    ("config-missing", TV + " --config {new}/nope.json", None, 2, "nope.json not found"),
    ("config-malformed", TV + " --config {cfg}", '{"train": {"steps": 5}\n', 2,
     "is not valid JSON"),
    ("config-just-5", TV + " --config {cfg}", "5", 2, "must hold a JSON object with sections"),
    ("config-list", TV + " --config {cfg}", "[1, 2]", 2, "must hold a JSON object"),
    ("config-train-null", TV + " --config {cfg}", '{"train": null}', 2,
     "section 'train' of config file"),
    ("config-vae-number", TV + " --config {cfg}", '{"vae": 3}', 2, "section 'vae' of config"),
    ("config-unknown-section", TV + " --config {cfg}", '{"training": {}}', 2,
     "unknown section(s) ['training']"),
    ("config-unknown-key", TV + " --config {cfg}", '{"train": {"stepz": 3}}', 2,
     "unknown training option(s) ['stepz']"),
    ("config-steps-string", TV + " --config {cfg}", '{"train": {"steps": "5"}}', 2,
     "steps (--steps) must be an integer >= 0 (got '5'), in config file"),
    ("config-steps-float", TV + " --config {cfg}", '{"train": {"steps": 5.5}}', 2,
     "steps (--steps) must be"),
    ("config-steps-negative", TV + " --config {cfg}", '{"train": {"steps": -5}}', 2,
     "must be an integer >= 0 (got -5)"),
    ("config-steps-null", TV + " --config {cfg}", '{"train": {"steps": null}}', 2,
     "must be an integer >= 0 (got None)"),
    ("config-steps-bool", TV + " --config {cfg}", '{"train": {"steps": true}}', 2,
     "must be an integer >= 0 (got True)"),
    ("config-lr-string", TV + " --config {cfg}", '{"train": {"lr": "fast"}}', 2,
     "lr (--lr) must be"),
    ("config-batch-size-0", TV + " --config {cfg}", '{"train": {"batch_size": 0}}', 2,
     "batch_size (--batch-size) must be"),
    ("config-optimizer-sgd", TV + " --config {cfg}", '{"train": {"optimizer": "sgd"}}', 2,
     "must be one of 'adam', 'adamax' (got 'sgd')"),
    ("config-checkpoint-every-0", TV + " --config {cfg}", '{"train": {"checkpoint_every": 0}}',
     2, "checkpoint_every (--checkpoint-every) must be"),
    ("config-vae-hidden-string", TV + " --config {cfg}", '{"vae": {"hidden": "big"}}', 2,
     "invalid vae config"),
    ("config-vae-type", TV + " --config {cfg}", '{"vae": {"type": "transformer"}}', 2,
     "unknown VAE type 'transformer'"),
    ("config-vae-unknown-kwarg", TV + " --config {cfg}", '{"vae": {"hidden_size": 64}}', 2,
     "unexpected keyword argument 'hidden_size'"),
    ("config-vae-hidden-negative", TV + " --config {cfg}", '{"vae": {"hidden": -4}}', 2,
     "sizes must be >= 1 (got hidden=-4)"),
    ("config-ebm-step-size-string", TE + " --config {cfg}", '{"train": {"step_size": "big"}}',
     2, "step_size (--step-size) must be"),
    ("config-ebm-space", TE + " --config {cfg}", '{"train": {"space": "pixel"}}', 2,
     "must be one of 'eps', 'latent', 'data' (got 'pixel')"),
    ("config-ebm-igebm-clip-string", TE + " --config {cfg}", '{"train": {"igebm_clip": "yes"}}',
     2, "must be True or False"),
    ("config-energy-hidden-0", TE + " --config {cfg}", '{"energy": {"hidden": 0}}', 2,
     "sizes must be >= 1 (got hidden=0)"),
    # --- checkpoints and paths
    ("train-ebm-before-train-vae", "train-ebm --out {new}", None, 2, "no checkpoint at"),
    ("train-ebm-vae-missing", "train-ebm --out {new} --vae {new}/none.pt", None, 2,
     "no checkpoint at"),
    ("train-ebm-vae-is-ebm", "train-ebm --out {new} --vae {run}/ebm.pt", None, 2,
     "has kind 'ebm', but kind 'vae' is needed"),
    ("train-ebm-vae-corrupt", "train-ebm --out {new} --vae {junk}", None, 2, "{junk}"),
    ("sample-before-training", "sample --out {new}", None, 2, "no checkpoint at"),
    ("sample-ebm-is-vae", SA.replace("{run}/ebm.pt", "{run}/vae.pt"), None, 2,
     "has kind 'vae', but kind 'ebm' is needed"),
    ("sample-vae-other-width", SA.replace("{run}/vae.pt", "{wide}"), None, 2,
     "is not the one the EBM in"),
    ("sample-vae-other-dataset", SA.replace("{run}/vae.pt", "{swiss}"), None, 2,
     "dataset swissroll"),
    ("sample-out-under-a-file", SA.replace("{new}", "{file}/sub"), None, 2, "cannot write to"),
    ("train-vae-out-is-a-file", "train-vae --dataset 25gaussians --out {file} --steps 1", None,
     2, "cannot write to"),
    ("resume-with-another-width", "train-vae --dataset 25gaussians --out {runcopy} --config {cfg}",
     '{"vae": {"hidden": 64}}', 2, "was trained with vae"),
    ("resume-with-another-dataset", "train-vae --dataset digits --out {runcopy} --steps 1", None,
     2, "or --no-resume)"),
    # --- a run that diverges: one line, exit code 1
    ("train-ebm-diverges", TE + " --steps 3 --langevin-steps 5 --step-size 1e6 --batch-size 8",
     None, 1, "diverged"),
    ("sample-diverges", SA + " --steps 5 --step-size 1e6", None, 1, "Langevin chain diverged"),
]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The shared checkpoints, built once (about 5 s)."""
    root = tmp_path_factory.mktemp("bad_input")
    run, wide, swiss = root / "run", root / "wide", root / "swiss"
    quiet = ("--batch-size", "16")
    assert main(["train-vae", "--dataset", "25gaussians", "--out", str(run), "--steps", "3",
                 *quiet]) == 0
    assert main(["train-ebm", "--out", str(run), "--steps", "1", "--langevin-steps", "1",
                 *quiet]) == 0
    (root / "w.json").write_text(json.dumps({"vae": {"hidden": 64}}))
    assert main(["train-vae", "--dataset", "25gaussians", "--out", str(wide), "--steps", "1",
                 "--config", str(root / "w.json"), *quiet]) == 0
    assert main(["train-vae", "--dataset", "swissroll", "--out", str(swiss), "--steps", "1",
                 *quiet]) == 0
    (root / "junk.pt").write_bytes(b"")
    (root / "afile").write_text("not a directory")
    return {"run": str(run), "wide": str(wide / "vae.pt"), "swiss": str(swiss / "vae.pt"),
            "junk": str(root / "junk.pt"), "file": str(root / "afile")}


def _argv(template: str, values: dict) -> list:
    return [word.format(**values) for word in template.split()]


def _assert_one_clear_error(code, expected_code, out, err, fragment):
    assert "Traceback" not in out + err, err
    assert code == expected_code, (code, err)
    # Only a run that got going (the divergence rows) logs a progress line before its error.
    lines = err.strip().splitlines()
    assert len(lines) == 1 or expected_code == 1, f"expected one line on stderr, got:\n{err}"
    assert [line for line in lines if "error:" in line] == lines[-1:], err
    assert lines[-1].startswith(("error:", "vaebm-fast")), lines[-1]
    assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_line(case, fixtures, tmp_path, capsys):
    _, template, config, expected_code, fragment = case
    new = tmp_path / "new"
    runcopy = tmp_path / "runcopy"
    runcopy.mkdir()
    shutil.copy(os.path.join(fixtures["run"], "vae.pt"), runcopy / "vae.pt")
    values = {**fixtures, "new": str(new), "cfg": str(tmp_path / "config.json"),
              "runcopy": str(runcopy)}
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    capsys.readouterr()
    code = main(_argv(template, values))
    captured = capsys.readouterr()
    _assert_one_clear_error(code, expected_code, captured.out, captured.err,
                            fragment.format(**values))
    # Not silently accepted: nothing was trained or sampled into the fresh directory.
    written = sorted(p.name for p in new.rglob("*") if p.is_file()) if new.exists() else []
    assert not [n for n in written if n.endswith((".pt", ".npy", ".png"))], written


def test_the_table_covers_enough_rows():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, fragment", [
    (["train-vae", "--dataset", "25gaussians", "--out", "{new}", "--steps", "-1"],
     "(--steps) must be an integer >= 0"),
    (["train-vae", "--dataset", "25gaussians", "--out", "{new}", "--config", "{cfg}"],
     "steps (--steps) must be an integer >= 0 (got '5'), in config file"),
])
def test_by_subprocess(argv, fragment, tmp_path):
    """The same rows as a real process: exit code, one line, no traceback."""
    (tmp_path / "c.json").write_text('{"train": {"steps": "5"}}')
    values = {"new": str(tmp_path / "new"), "cfg": str(tmp_path / "c.json")}
    result = subprocess.run([sys.executable, "-m", "vaebm_fast", *_argv(" ".join(argv), values)],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "VAEBM_FAST_TRACEBACK": "0"})
    _assert_one_clear_error(result.returncode, 2, result.stdout, result.stderr, fragment)
