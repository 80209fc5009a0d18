"""vaebm_fast._toolchain: the nvcc search shared by setup.py (which loads the file by path,
without torch or the package) and ``vaebm-fast info``."""
import os
import subprocess
import sys
from pathlib import Path

from vaebm_fast import _toolchain, info

ROOT = Path(__file__).resolve().parents[1]


def _fake_nvcc(root: Path) -> str:
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 99.9, V99.9.0'\n")
    nvcc.chmod(0o755)
    return str(nvcc)


def test_cuda_home_comes_before_path(tmp_path, monkeypatch):
    home = _fake_nvcc(tmp_path / "home")
    on_path = _fake_nvcc(tmp_path / "path")
    monkeypatch.setenv("PATH", str(Path(on_path).parent))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert _toolchain.find_nvcc() == home
    monkeypatch.delenv("CUDA_HOME")
    assert _toolchain.find_nvcc() == on_path
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "home"))
    assert _toolchain.find_nvcc() == home


def test_a_cuda_home_without_nvcc_is_skipped(tmp_path, monkeypatch):
    on_path = _fake_nvcc(tmp_path / "path")
    monkeypatch.setenv("PATH", str(Path(on_path).parent))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "empty"))
    assert _toolchain.find_nvcc() == on_path


def test_info_reports_the_nvcc_a_build_would_use(tmp_path, monkeypatch):
    home = _fake_nvcc(tmp_path / "home")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "home"))
    assert info.collect_info()["nvcc"] == f"Cuda compilation tools, release 99.9, V99.9.0 ({home})"


def test_setup_py_finds_it_without_torch_or_the_package(tmp_path):
    # setup.py's own loader, run where importing torch or vaebm_fast raises ImportError (setup()
    # itself is replaced by a no-op, and VAEBM_FAST_NO_EXT=1 keeps _extensions() away from torch).
    home = _fake_nvcc(tmp_path / "home")
    code = (
        "import runpy, sys, setuptools\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['vaebm_fast'] = None\n"
        "setuptools.setup = lambda **kw: None\n"
        f"ns = runpy.run_path({str(ROOT / 'setup.py')!r})\n"
        "print(ns['_toolchain']().find_nvcc())\n")
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "home"), VAEBM_FAST_NO_EXT="1")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == home
