#!/usr/bin/env bash
# Validate a GPU machine in minutes: build, CUDA-graph capture of every op and of FastSampler
# chains (the tests marked `graphs`), the whole test suite on CUDA, a CIFAR-scale chain eager vs
# graph replay, the op benchmarks.
#
#   bash scripts/gpu_check.sh OUTDIR [--budget SECONDS] [--phases LIST] [--tests ARGS] [--dry-run]
#
# --phases: a comma-separated subset of env,build,graphs,tests,chain,ops,speed (default: all
# but speed; the build always runs when a later phase needs the extension). speed is the GPU
# speed measurement (a second call: --phases build,speed --budget 540): CIFAR-10 scale chains at
# batch 32 and 256 and the pixel-space IGEBM at batch 64, every variant (eager, FastSampler
# without and with its unrolled or step graph, torch.compile mode="reduce-overhead"), each
# profiled once for the GPU's idle share. --tests: what pytest runs in the
# tests phase (default: the whole suite), e.g. --tests "tests/ops/test_swish.py -k float64" to
# rerun what failed.
#
# Run from anywhere; it works in the repository it belongs to and uses the python3 on PATH
# (a machine with an NVIDIA GPU, a CUDA build of torch, nvcc, triton, pytest, pytest-xdist,
# pytest-timeout). It needs no network: nothing is installed, the extension is built in place
# (`setup.py build_ext --inplace`, for this GPU's architecture only) and imported through
# PYTHONPATH.
#
# Every phase runs under its own time cap and the whole run under --budget (default 480 s); a
# phase that no longer fits is skipped and says so. Logs and results go to OUTDIR; the last
# thing printed is the one-screen summary (also OUTDIR/summary.txt).
#
# --dry-run (what CI runs, on a CPU machine): the same phases with CPU stand-ins, so the
# script's own logic is exercised: the extension is built only if it is not loaded already, the
# tests are a small selection, the graph tests run their CPU parts, the benchmarks run at their
# --quick sizes on the CPU. The benchmarks append their rows to OUTDIR/results.jsonl and draw
# OUTDIR/<suite>_<device>.md and .png from it.
set -uo pipefail

usage() { echo "usage: bash scripts/gpu_check.sh OUTDIR [--budget SECONDS] [--phases LIST] [--tests ARGS] [--dry-run]" >&2; exit 2; }
out="" budget=480 dry=0 phases="env,build,graphs,tests,chain,ops" test_args="tests/"
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) [ $# -ge 2 ] || usage; budget=$2; shift 2 ;;
    --phases) [ $# -ge 2 ] || usage; phases=$2; shift 2 ;;
    --tests) [ $# -ge 2 ] || usage; test_args=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage
case "$budget" in ''|*[!0-9]*) echo "--budget must be a whole number of seconds" >&2; exit 2 ;; esac

repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$repo" || exit 1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$SECONDS
summary="$out/summary.txt"
: > "$summary.rows"

# record NAME STATUS SECONDS DETAIL
record() { printf '%-8s %-7s %5ss  %s\n' "$1" "$2" "$3" "$4" >> "$summary.rows"; }
left() { echo $((budget - (SECONDS - start))); }

# phase NAME CAP MIN_SECONDS DETAIL_FUNCTION COMMAND...: run COMMAND under min(CAP, time left),
# logging to OUTDIR/NAME.log; skipped when not asked for or when less than MIN_SECONDS remain.
phase() {
  local name=$1 cap=$2 need=$3 detail_fn=$4; shift 4
  case ",$phases," in *",$name,"*) ;; *) [ "$name" = build ] || return 0 ;; esac
  local remaining; remaining=$(left)
  if [ "$remaining" -lt "$need" ]; then
    record "$name" SKIP 0 "needs ${need}s, ${remaining}s of the budget left"
    echo "== $name: skipped (needs ${need}s, ${remaining}s left)"
    return 0
  fi
  local limit=$(( cap < remaining ? cap : remaining ))
  echo "== $name (cap ${limit}s): $*"
  local t0=$SECONDS rc
  # A phase is a shell function: timeout runs it in a child bash (functions are exported).
  timeout --kill-after=15 "$limit" bash -c '"$@"' phase "$@" > "$out/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - t0)) status=PASS
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=TIMEOUT
  elif [ $rc -ne 0 ]; then status=FAIL; fi
  record "$name" "$status" "$took" "$($detail_fn "$out/$name.log" $rc)"
  tail -n 5 "$out/$name.log"
  return 0
}

# --- detail extractors (one line from a phase's log) ------------------------------------------
detail_env() { grep -m1 '^gpu:' "$1" | cut -c1-110 || true; }
detail_build() {
  local note=""
  grep -q '^compiler note' "$1" && note=" (rebuilt with c++: \$CXX crashed on errors)"
  echo "$({ grep -m1 '^native:' "$1" || tail -n 1 "$1"; } | cut -c1-70)$note"
}
detail_tests() { grep -E '(passed|failed|error|no tests ran)' "$1" | tail -n 1 | tr -d '=' | cut -c1-110; }
detail_graphs() { detail_tests "$1"; }
detail_bench() { grep -m1 '^headline:' "$1" | cut -c11-120 || tail -n 1 "$1" | cut -c1-110; }

# --- phases -------------------------------------------------------------------------------------
env_report() {
  "$PY" - <<'EOF'
import platform, shutil, subprocess, sys
import torch
print("python:", sys.version.split()[0], platform.machine())
print("torch:", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton:", triton.__version__)
except Exception as exc:  # noqa: BLE001
    print("triton: not importable:", exc)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
          f"{p.multi_processor_count} SMs; torch {torch.__version__}")
else:
    print("gpu: none (CUDA not available to torch", torch.__version__ + ")")
nvcc = shutil.which("nvcc")
print("nvcc:", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
      .strip().splitlines()[-1] if nvcc else "not found")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv
  return 0
}

# True when a native op's argument check raises a Python error instead of killing the process.
error_path_ok() {
  "$PY" - <<'EOF' >/dev/null 2>&1
import torch
import vaebm_fast._native as n
assert n.status().loaded
try:
    torch.ops.vaebm_fast.swish_backward(torch.zeros(3), torch.zeros(4), 1.0)
except RuntimeError:
    pass
EOF
}

build() {
  local loaded
  loaded=$("$PY" -c 'import vaebm_fast._native as n; s = n.status(); print(int(s.loaded), int(s.has_cuda_kernels))' 2>/dev/null)
  if [ "$dry" = 1 ] && [ "${loaded%% *}" = 1 ]; then
    echo "dry run: the extension is already loaded, not rebuilt"
  else
    local arch=""
    if [ "$dry" = 0 ]; then
      arch=$("$PY" -c 'import torch; p = torch.cuda.get_device_capability(0); print(f"{p[0]}.{p[1]}")') || return 1
      export TORCH_CUDA_ARCH_LIST=$arch VAEBM_FAST_CUDA=1
    fi
    echo "building for ${arch:-the CPU} with MAX_JOBS=${MAX_JOBS:-$(nproc)}, CXX=${CXX:-c++}"
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace || return 1
    # A library whose errors crash the process is worse than none. Seen on a GPU image whose
    # CXX is a second GCC: every TORCH_CHECK that fired segfaulted (while c10::Error recorded
    # its backtrace), in any extension built with it. Then rebuild with torch's default
    # compiler (`c++`) and say so.
    if ! error_path_ok && [ -n "${CXX:-}" ]; then
      echo "compiler note: the library built with CXX=$CXX crashes when an op raises an error;" \
           "rebuilding with the default c++"
      rm -rf build vaebm_fast/_C*.so
      env -u CXX -u CC MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py -q build_ext --inplace \
        || return 1
    fi
  fi
  error_path_ok || { echo "native: an op raising an error crashes the process"; return 1; }
  "$PY" - <<'EOF'
import sys
import vaebm_fast._native as n
s = n.status()
print(f"native: loaded={s.loaded} cuda_kernels={s.has_cuda_kernels} "
      f"{'' if s.loaded else s.reason}")
sys.exit(0 if s.loaded else 1)
EOF
}

tests() {
  if [ "$dry" = 1 ]; then
    # A selection that runs the native, Triton-interpreter and sampler paths quickly.
    VAEBM_FAST_REQUIRE_NATIVE=1 "$PY" -m pytest -q -p no:cacheprovider \
      --junitxml="$out/tests.xml" tests/ops/test_rng.py tests/ops/test_langevin.py
  else
    local workers=$(( $(nproc) / 2 ))
    [ "$workers" -gt 8 ] && workers=8
    # -v: one line per test as it ends, so a log cut short by the cap still says what ran.
    # shellcheck disable=SC2086  (test_args is a word list on purpose)
    VAEBM_FAST_REQUIRE_NATIVE=1 VAEBM_FAST_REQUIRE_TRITON=1 VAEBM_FAST_REQUIRE_CUDA=1 \
      "$PY" -m pytest -v -p no:cacheprovider -n "$workers" --timeout 90 --tb=short -rfE \
      --junitxml="$out/tests.xml" $test_args
  fi
}

graphs() {
  # The tests marked `graphs`: every op captured in a CUDA graph and run on a side stream, on
  # every backend, and FastSampler's captured chains on image models against the eager sampler.
  # First, because they are the quickest to say whether the GPU paths work at all. (On the CPU:
  # the graphed chain's body run eagerly; the CUDA ones skip.)
  local require="VAEBM_FAST_REQUIRE_NATIVE=1 VAEBM_FAST_REQUIRE_TRITON=1" timeout_opt=""
  if [ "$dry" = 0 ]; then
    require="$require VAEBM_FAST_REQUIRE_CUDA=1" timeout_opt="--timeout 120"
  fi
  # shellcheck disable=SC2086  (word lists on purpose)
  env $require "$PY" -m pytest -q -p no:cacheprovider -m graphs $timeout_opt -rfE \
    --junitxml="$out/graphs.xml" tests/
}

# One line from the rows a benchmark phase appended to OUTDIR/results.jsonl:
# headline SUITE CASE_REGEX ms|copy (ms: each timed variant's median; copy: our variants'
# bandwidth as a share of the copy_ ceiling's), for the first case whose key matches.
headline() {
  "$PY" - "$out" "$@" <<'EOF'
import re, sys
from vaebm_fast.bench.table import latest_cases, read_rows
out, suite, pattern, field = sys.argv[1:]
for key, rows in latest_cases([r for r in read_rows(out) if r["suite"] == suite]).items():
    if not re.search(pattern, key):
        continue
    timed = [r for r in rows if r["median_s"]]
    ceiling = next((r for r in timed if r["role"] == "ceiling"), None)
    if field == "ms":
        cells = [f"{r['variant']} {r['median_s'] * 1e3:.0f} ms" for r in timed]
    else:
        gbps = lambda r: r["bytes"] / r["median_s"]  # noqa: E731
        cells = [f"{r['variant']} {100 * gbps(r) / gbps(ceiling):.0f}% of copy_"
                 for r in timed if ceiling and r["role"] == "ours" and r["bytes"]]
    print("headline:", key, "; ".join(cells))
    break
EOF
}

chain() {
  if [ "$dry" = 1 ]; then
    # Short chains on one thread: this exercises the script, it measures nothing.
    "$PY" -m vaebm_fast bench chains --quick --device cpu --only '^chain4_cifar' \
      --set n_steps=4 --threads 1 --variants 'fast' --compile-timeout 0 --repeats 1 \
      --out "$out"
  else
    # CIFAR-10 scale (official widths, batch 32): plain PyTorch vs FastSampler without and with
    # its CUDA graph; torch.compile is left to the full chain benchmark.
    "$PY" -m vaebm_fast bench chains --device cuda --only '^chain16_cifar_b32$' \
      --set cifar_batches=32 --set warmup_cifar=1 --repeats 3 --variants 'fast' \
      --compile-timeout 0 --out "$out"
  fi
  local rc=$?
  headline chains '^chain[0-9]+_cifar' ms
  return $rc
}

bench_ops() {
  if [ "$dry" = 1 ]; then
    "$PY" -m vaebm_fast bench ops --quick --device cpu --only 'langevin|swish' --threads 1 \
      --out "$out"
  else
    "$PY" -m vaebm_fast bench ops --device cuda --repeats 9 --out "$out"
  fi
  local rc=$?
  headline ops '^langevin_' copy
  return $rc
}

speed() {
  if [ "$dry" = 1 ]; then
    "$PY" -m vaebm_fast bench chains --quick --device cpu --only '^chain4_toy$' \
      --set n_steps=4 --threads 1 --variants 'fast' --compile-timeout 0 --repeats 1 \
      --out "$out"
  else
    "$PY" -m vaebm_fast bench chains --device cuda \
      --only '^chain16_(cifar_b32|cifar_b256|igebm)$' --set cifar_batches=32,256 \
      --set warmup_cifar=1 --repeats 3 --compile-mode reduce-overhead --compile-timeout 150 \
      --profile --out "$out"
  fi
  local rc=$?
  headline chains '^chain[0-9]+_(cifar_b32|toy)$' ms  # not the chain phase's own case
  return $rc
}

export -f env_report error_path_ok build tests graphs headline chain bench_ops speed
export PY out dry test_args

# Caps sum to more than the default budget on purpose: a fast build leaves time to later phases.
phase env    20  5   detail_env   env_report
phase build  240 60  detail_build build
build_ok=$(grep -c '^native: loaded=True' "$out/build.log" 2>/dev/null || true)
if [ "${build_ok:-0}" = 0 ]; then
  record tests SKIP 0 "the build failed: see build.log"
  record graphs SKIP 0 "the build failed: see build.log"
else
  phase graphs 90  20  detail_graphs graphs
  phase tests  240 60  detail_tests  tests
fi
phase chain  120 40  detail_bench  chain
phase ops    90  30  detail_bench  bench_ops
phase speed  480 120 detail_bench  speed

{
  echo "vaebm_fast GPU check $( [ "$dry" = 1 ] && echo '(dry run on the CPU) ')-- $(date -u +%Y-%m-%dT%H:%MZ), $((SECONDS - start)) s of a ${budget} s budget"
  grep -m1 '^gpu:' "$out/env.log" 2>/dev/null || true
  echo "phase    status   time  detail"
  cat "$summary.rows"
  echo "logs and results: $out"
} > "$summary"
rm -f "$summary.rows"
echo
cat "$summary"
grep -qE '^[a-z]+ +(FAIL|TIMEOUT)' "$summary" && exit 1
exit 0
