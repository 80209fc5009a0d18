"""The Triton kernels also compile for a GPU (sm_90 PTX), checked without one.

The other Triton tests run the kernels in Triton's CPU interpreter, which accepts code the
compiler rejects (e.g. non-constexpr globals) and takes other branches (tl.* math instead of
libdevice). Compiling to PTX needs no GPU, only Triton's NVIDIA backend, so this test compiles
every kernel in a subprocess without TRITON_INTERPRET and checks the PTX uses no approximate
transcendental instructions (the normal transform must use libdevice's accurate functions)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from vaebm_fast.triton_kernels import langevin, replay, rng

    def build(name, fn, sig, consts):
        sig = {**sig, **{k: "constexpr" for k in consts}}
        ptx = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                             target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        for approx in ("cos.approx", "sin.approx", "lg2.approx"):
            assert approx not in ptx, (name, approx)
        print("compiled", name)

    i32, i64 = "i32", "i64"
    halves = lambda *names: {f"{n}_{h}": i32 for n in names for h in ("lo", "hi")}
    build("philox4x32", rng._philox4x32_kernel,
          {"offsets_ptr": "*i64", "out_ptr": "*i64", **halves("seed"), "n": i64},
          {"BLOCK": 256})
    build("philox_normal_", rng._philox_normal_kernel,
          {"out_ptr": "*bf16", **halves("seed", "off"), "n": i64}, {"BLOCK": 1024})
    for dtype, compute in ((tl.bfloat16, "fp32"), (tl.float64, "fp64")):
        build(f"langevin_step_ {dtype}", langevin._langevin_kernel,
              {"table_ptr": "*i64", "n_tensors": i32, "hsn_ptr": "*" + compute, "n_rows": i32,
               **halves("seed", "off", "half_step", "prior", "sigma", "clip", "low", "high")},
              {"DTYPE": dtype, "COMPUTE": getattr(tl, "float32" if compute == "fp32"
                                                   else "float64"),
               "HAS_HSN": True, "SEARCH_STEPS": 3, "BLOCK": 1024})
    rows = {"row_stride": i64, "n_rows": i64, "index_ptr": "*i64", "P": i64, "n": i64}
    build("replay_gather", replay._gather_kernel,
          {"buf_ptr": "*fp16", "reinit_ptr": "*i1", "out_ptr": "*fp16", **rows,
           **halves("seed", "off")}, {"BLOCK": 1024})
    build("replay_scatter_", replay._scatter_kernel,
          {"buf_ptr": "*fp32", "values_ptr": "*fp32", **rows}, {"BLOCK": 1024})
''')


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("Triton has no NVIDIA backend here")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("compiled") == 6, proc.stdout
