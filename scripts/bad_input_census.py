"""Census of the ops against generated inputs: per op and backend, how many bad inputs got a
clear error, how many crashed the process, how many were silently accepted, and how many valid
inputs agreed with the eager reference.

    python scripts/bad_input_census.py [--examples 200] [--triton-examples 10]
                                       [--device cpu] [--out FILE.md]

The inputs are the hypothesis strategies of tests/ops/bad_inputs.py (the same ones the
property tests use), generated deterministically (derandomize), so two runs count the same
inputs. Each (op, backend) batch runs in a child process; a child killed by a signal is
counted as one crash, and a new child resumes the batch after the input that crashed, so a
crash never ends the census. Outcomes:

* bad inputs: "clear" (the documented ValueError/TypeError, one line, naming the argument,
  nothing written), "unclear" (another exception type, or a message that does not name it),
  "silent" (no error at all), "crash" (the process died);
* valid inputs: "agreed" (within the dtype's tolerance of the eager reference),
  "disagreed" (a silent wrong result) or "errored" (a valid input refused).

"silent wrong" in the table adds the silent bad inputs and the disagreeing valid ones. Exit
status 1 when any crash, silent wrong result, unclear error or refused valid input was seen.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("native", "triton", "eager")
OUTCOMES = ("clear", "unclear", "silent", "agreed", "disagreed", "errored")


# ------------------------------------------------------------------------------ child

def run_child(op: str, backend: str, device: str, kind: str, examples: int, skip: int) -> None:
    """Print one line per generated input, ``<kind> <outcome>`` (after ``start <k>``), and
    ``detail <text>`` for every outcome that is a finding. Inputs before ``skip`` are drawn
    but not run (to resume after a crash)."""
    from hypothesis import HealthCheck, Phase, given, settings

    from tests.ops import bad_inputs

    strategy = (bad_inputs.invalid_cases if kind == "invalid" else bad_inputs.valid_cases)(
        op, backend, device)
    seen = [0]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def census(case):
        k = seen[0]
        seen[0] += 1
        if k < skip:
            return
        print(f"start {k}", flush=True)
        outcome, detail = (bad_inputs.invalid_outcome(case) if kind == "invalid"
                           else bad_inputs.valid_outcome(case))
        if outcome not in ("clear", "agreed"):
            one_line = f"{case.label} -> {detail}".replace("\n", " ")[:400]
            print(f"detail {one_line}", flush=True)
        print(f"{kind} {outcome}", flush=True)

    census()


# ------------------------------------------------------------------------------ parent

def available(op: str, backend: str, device: str) -> bool:
    if backend == "eager":
        return True
    from tests.ops import bad_inputs
    from vaebm_fast.ops import backend_availability
    return backend_availability(bad_inputs.kernel_name(op), device)[backend] is None


def run_batch(op: str, backend: str, device: str, kind: str, examples: int) -> dict:
    """Counts of one (op, backend, kind) batch, in as many children as crashes need."""
    counts = collections.Counter()
    details = []
    done = 0
    while True:
        cmd = [sys.executable, __file__, "--child", op, backend, device, kind, str(examples),
               str(done)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ), check=False)
        started = None
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "start":
                started = int(rest)
            elif word == "detail":
                details.append(rest)
            elif word == kind:
                counts[rest] += 1
                done = started + 1
                started = None
        if proc.returncode == 0:
            return {"counts": counts, "details": details}
        if proc.returncode < 0:  # killed by a signal: the input that started is a crash
            counts["crash"] += 1
            details.append(f"input {started}: signal {-proc.returncode}")
            done = (started if started is not None else done) + 1
            continue
        counts["harness"] += 1  # the child itself failed (a bug of this script or a strategy)
        details.append("child failed: " + proc.stderr.strip().splitlines()[-1]
                       if proc.stderr.strip() else f"child exited {proc.returncode}")
        return {"counts": counts, "details": details}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200,
                        help="bad and valid inputs each, per op and backend (default 200)")
    parser.add_argument("--triton-examples", type=int, default=10,
                        help="the same for Triton's (slow) CPU interpreter (default 10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ops", nargs="*", help="only these ops (default: all)")
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.device == "cpu":  # Triton's kernels run on CPU tensors in its interpreter only
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.child:
        op, backend, device, kind, examples, skip = args.child
        run_child(op, backend, device, kind, int(examples), int(skip))
        return 0

    import torch

    from tests.ops import bad_inputs
    from vaebm_fast import _native

    ops = args.ops or sorted(bad_inputs.OPS)
    rows, findings = [], []
    totals = collections.Counter()
    for op in ops:
        for backend in BACKENDS:
            if not available(op, backend, args.device):
                continue
            n = args.triton_examples if backend == "triton" else args.examples
            bad = run_batch(op, backend, args.device, "invalid", n)
            good = run_batch(op, backend, args.device, "valid", n)
            c = bad["counts"] + good["counts"]
            row = {"op": op, "backend": backend,
                   "tried": sum(bad["counts"].values()),
                   "clear": c["clear"], "unclear": c["unclear"], "crash": c["crash"],
                   "silent": c["silent"] + c["disagreed"],
                   "valid": sum(good["counts"].values()) - good["counts"]["harness"],
                   "agreed": c["agreed"], "errored": c["errored"], "harness": c["harness"]}
            rows.append(row)
            totals.update({k: v for k, v in row.items() if isinstance(v, int)})
            findings += [f"{op} / {backend}: {d}" for d in bad["details"] + good["details"]]
            print(f"{op:18s} {backend:7s} {row}", file=sys.stderr, flush=True)

    st = _native.status()
    lines = [
        "# Bad-input census of the ops",
        "",
        f"Command: `python scripts/bad_input_census.py --examples {args.examples} "
        f"--triton-examples {args.triton_examples} --device {args.device}"
        + (f" --ops {' '.join(args.ops)}" if args.ops else "") + "`",
        f"Machine: {_cpu_model()} ({platform.machine()} {platform.system()}), "
        f"{os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__}; native library "
        f"{'loaded' if st.loaded else 'not loaded: ' + str(st.reason)}; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        "Inputs from tests/ops/bad_inputs.py (derandomized hypothesis strategies). Bad inputs: "
        "clear = the documented ValueError/TypeError naming the argument, one line, nothing "
        "written; unclear = any other error or message; crash = the process died; silent wrong "
        "= a bad input accepted or a valid input's result off the eager reference. Valid "
        "inputs: agreed = within the dtype's tolerance of the reference; refused = a valid "
        "input raised. Triton runs in its CPU interpreter (few, tiny inputs). Fewer bad "
        "inputs than asked for: the op's strategy has no more distinct ones (hypothesis "
        "stops when it has drawn them all).",
        "",
        "| op | backend | bad inputs tried | clear errors | unclear errors | crashes | "
        "silent wrong results | valid inputs | valid agreed | valid refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + [dict(totals, op="**total**", backend="")]:
        lines.append(f"| {r['op']} | {r['backend']} | {r['tried']} | {r['clear']} | "
                     f"{r['unclear']} | {r['crash']} | {r['silent']} | {r['valid']} | "
                     f"{r['agreed']} | {r['errored']} |")
    if totals["harness"]:
        lines += ["", f"{totals['harness']} batches failed to run (see the findings)."]
    lines += ["", "Findings:" if findings else "Findings: none."]
    lines += [f"- {f}" for f in findings[:200]]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    bad = (totals["crash"] + totals["silent"] + totals["unclear"] + totals["errored"]
           + totals["harness"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
