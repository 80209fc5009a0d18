"""Packaging: what the sdist and the wheels hold, the dependencies they declare, the torch check
at import, the optional [cli] extra, and the first-use compile's cache (vaebm_fast._compile).

The real compile of a pure wheel (pip install . with build isolation, then the first op) is in
.ci/run's packaging step: it takes minutes. Here the sdist and the pure wheel are built without
compiling anything (seconds).
"""
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from email.parser import Parser
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
import torch

import vaebm_fast
from vaebm_fast import _compile, _requirements

ROOT = Path(__file__).resolve().parents[1]


def _run(code, cwd, env=None, check=True):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env=env or dict(os.environ), timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def sdist_and_pure_wheel(tmp_path_factory):
    """(sdist path, wheel path): the sdist of this checkout, and the wheel built from the
    unpacked sdist alone, as pip's build isolation does when it cannot import torch."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, VAEBM_FAST_NO_EXT="1")  # what a build without torch does
    # The sdist is built from a copy: building writes egg-info next to the sources.
    tree = out / "tree"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes((ROOT / name).read_bytes())
    sdist = _run(f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))",
                 tree, env)
    sdist = out / sdist.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "unpacked")
    (unpacked,) = (out / "unpacked").iterdir()
    # A library an earlier build left in build/ must not slip into a wheel built without one.
    stale = unpacked / "build" / "lib" / "vaebm_fast" / ("_C" + EXTENSION_SUFFIXES[0])
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    wheel = _run(f"from setuptools import build_meta as b; print(b.build_wheel({str(out)!r}))",
                 unpacked, env)
    return sdist, out / wheel.stdout.strip().splitlines()[-1]


def test_the_sdist_holds_every_source_a_build_needs(sdist_and_pure_wheel):
    sdist, _ = sdist_and_pure_wheel
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    tracked = set(subprocess.run(["git", "ls-files", "csrc", "tests/cpp"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split())
    assert tracked and tracked <= names  # every header, .cpp and .cu, and the C++ tests
    for name in ("LICENSE", "README.md", "CMakeLists.txt", "setup.py", "pyproject.toml",
                 "vaebm_fast/py.typed", "vaebm_fast/_toolchain.py", "vaebm_fast/_compile.py"):
        assert name in names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_the_pure_wheel_ships_the_sources_and_no_torch_requirement(sdist_and_pure_wheel):
    _, wheel = sdist_and_pure_wheel
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(z.read(meta_name).decode())
    csrc = {str(p.relative_to(ROOT / "csrc")) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert {n.split("vaebm_fast/_csrc/", 1)[1] for n in names if "/_csrc/" in n} == csrc
    assert "vaebm_fast/py.typed" in names and not [n for n in names if "/_C" in n]
    requires = meta.get_all("Requires-Dist")
    # No torch: a missing one is named by `import vaebm_fast`, never pulled in by pip (on PyPI
    # a bare torch is the multi-GB CUDA build). ninja runs the first-use compile.
    assert not [r for r in requires if re.split(r"[\s<>=!~;\[(]", r)[0] == "torch"]
    assert {"numpy", "tqdm", "ninja"} <= {r.split(";")[0].strip() for r in requires}
    assert [r for r in requires if r.startswith("matplotlib") and 'extra == "cli"' in r]
    assert [r for r in requires if r.startswith("scikit-learn") and 'extra == "cli"' in r]
    assert meta["Version"] == vaebm_fast.__version__  # written once, in __init__.py
    assert meta["License-Expression"] == "MIT"  # setuptools 77+ (the tests' own is newer)
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")
            or n.endswith(".dist-info/LICENSE")]


def test_a_compiled_wheel_requires_the_torch_it_was_built_for():
    # setup.py's own decision, without compiling: the extension and the requirements it adds.
    code = ("import runpy, setuptools, torch\n"
            "setuptools.setup = lambda **kw: None\n"
            "ns = runpy.run_path('setup.py')\n"
            "exts, cmds, reqs = ns['_extensions'](torch)\n"
            "print(len(exts), reqs)\n"
            "print(ns['_extensions'](None)[2])\n")
    env = dict(os.environ, VAEBM_FAST_CUDA="0")
    compiled, pure = _run(code, ROOT, env).stdout.strip().splitlines()[-2:]
    assert compiled == f"1 ['numpy', 'tqdm', 'torch=={torch.__version__}']"
    assert pure == "['numpy', 'tqdm', 'ninja']"


def test_import_without_torch_says_which_torch_to_install(tmp_path):
    out = _run(f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {str(ROOT)!r})\n"
               "import vaebm_fast", tmp_path, check=False)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: vaebm_fast needs PyTorch >= 2.4, which is not installed")
    assert "pip install torch==2.13.0" in last and "pytorch.org" in last


def test_the_torch_floor():
    assert _requirements.torch_problem(torch.__version__) is None
    assert _requirements.torch_problem("2.4.0") is None
    too_old = _requirements.torch_problem("2.3.1+cu121")
    assert "needs PyTorch >= 2.4" in too_old and "torch 2.3.1+cu121 is installed" in too_old
    # The APIs that set the floor exist in the torch the tests run with.
    assert callable(torch.library.register_fake) and callable(torch.library.register_autograd)


def test_the_library_imports_without_the_cli_extra_and_the_cli_names_it(tmp_path):
    code = ("import sys\n"
            "for name in ('matplotlib', 'sklearn'): sys.modules[name] = None\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "import vaebm_fast, vaebm_fast.ops, vaebm_fast.models, vaebm_fast.training\n"
            "import vaebm_fast.sampling, vaebm_fast.data, vaebm_fast.eval, vaebm_fast.cli\n"
            "from vaebm_fast.cli import main\n"
            "sys.exit(main(['train-vae', '--dataset', 'digits', '--out', sys.argv[1], "
            "'--steps', '1']))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        "error: the digits data set (bundled with it) needs scikit-learn, which is not "
        "installed: pip install 'vaebm_fast[cli]' (or pip install scikit-learn)")


# ----- the first-use compile's cache (vaebm_fast._compile), with a stand-in compiler ----------

@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEBM_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEBM_FAST_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _compile.cache_dir() == str(tmp_path / "xdg" / "vaebm_fast")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _compile.cache_dir() == str(tmp_path / "home" / ".cache" / "vaebm_fast")
    monkeypatch.setenv("VAEBM_FAST_CACHE_DIR", str(tmp_path / "mine"))
    assert _compile.cache_dir() == str(tmp_path / "mine")


def test_the_cache_key_follows_torch_and_every_source_file(monkeypatch, tmp_path):
    import shutil
    csrc = tmp_path / "csrc"
    shutil.copytree(_compile.sources_root(), csrc)
    monkeypatch.setattr(_compile, "sources_root", lambda: str(csrc))
    monkeypatch.setenv("VAEBM_FAST_CUDA", "0")
    key = _compile.recipe().key
    assert key.startswith(f"torch{torch.__version__}-cpu-{sys.implementation.cache_tag}-")
    assert _compile.recipe().key == key  # deterministic
    header = next(csrc.rglob("*.h"))
    header.write_text(header.read_text() + "\n// changed\n")
    changed = _compile.recipe().key
    assert changed != key
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert _compile.recipe().key.startswith("torch9.9.9-") and _compile.recipe().key != changed


def test_processes_starting_together_compile_once(monkeypatch, cache):
    # Threads open the lock file separately, so they contend for the flock as processes do.
    calls = []

    def fake_compile(build, work):
        calls.append(work)
        time.sleep(0.5)
        Path(work, _compile.LIBRARY).write_bytes(b"library")

    monkeypatch.setattr(_compile, "_compile_into", fake_compile)
    messages, results = [], []
    threads = [threading.Thread(target=lambda: results.append(
        _compile.ensure_library(announce=messages.append))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    key = _compile.recipe().key
    assert len(calls) == 1 and results == [str(cache / key / _compile.LIBRARY)] * 3
    assert Path(results[0]).read_bytes() == b"library"
    assert sorted(p.name for p in cache.iterdir()) == [key, key + ".lock"]  # no temp folder
    compiling = [m for m in messages if m.startswith("vaebm_fast: compiling")]
    assert len(compiling) == 1 and f"for torch {torch.__version__} (one time, ~" in compiling[0]
    # The next call finds it without compiling or announcing anything.
    assert _compile.ensure_library(announce=pytest.fail) == results[0]


def test_a_failed_compile_leaves_nothing_half_built(monkeypatch, cache):
    def failing_compile(build, work):
        Path(work, "half.o").write_bytes(b"")
        raise _compile.CompileError("compiling the kernels failed (x.cpp: error)")

    monkeypatch.setattr(_compile, "_compile_into", failing_compile)
    with pytest.raises(_compile.CompileError, match="x.cpp: error"):
        _compile.ensure_library(announce=lambda m: None)
    assert [p.name for p in cache.iterdir()] == [_compile.recipe().key + ".lock"]
    assert _compile.cached_library() is None


def test_an_unwritable_cache_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VAEBM_FAST_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(_compile.CompileError, match="VAEBM_FAST_CACHE_DIR to a writable"):
        _compile.ensure_library(announce=lambda m: None)


def test_a_build_killed_midway_is_cleaned_up_by_the_next(monkeypatch, cache):
    key = _compile.recipe().key
    leftover = cache / (key + ".tmp-killed")
    leftover.mkdir(parents=True)
    (leftover / "half.o").write_bytes(b"")
    monkeypatch.setattr(_compile, "_compile_into",
                        lambda build, work: Path(work, _compile.LIBRARY).write_bytes(b"lib"))
    _compile.ensure_library(announce=lambda m: None)
    assert sorted(p.name for p in cache.iterdir()) == [key, key + ".lock"]


def test_vaebm_fast_build(monkeypatch, cache, capsys):
    from vaebm_fast import _native
    from vaebm_fast.cli import main
    if not _native.status().loaded:
        pytest.skip(f"native extension unavailable: {_native.status().reason}")
    # An installed (or VAEBM_FAST_LIBRARY) library for this torch: nothing to compile.
    monkeypatch.setattr(_compile, "ensure_library", lambda: pytest.fail("compiled"))
    assert main(["build"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"native kernels for torch {torch.__version__} loaded from {_native.status().path}")
    # None installed and the compile fails: one line with the cause, exit status 1.

    def fail():
        raise _compile.CompileError("no C++ compiler: `c++ --version` failed")

    monkeypatch.setattr(_native, "_find_library", lambda: None)
    monkeypatch.setattr(_compile, "ensure_library", fail)
    assert main(["build"]) == 1
    assert capsys.readouterr().err.startswith("error: no C++ compiler")
