"""Loading of vaebm_fast._C: lazy, one warning with cause and fix, eager fallback; info."""
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from vaebm_fast import _native
from vaebm_fast._heap import heap_reuse_available
from vaebm_fast.info import collect_info, format_info, machine_info
from vaebm_fast.ops import (BackendUnavailableError, backend_availability, default_backend,
                            get_default_backend, langevin_step_, langevin_step_reference,
                            philox_normal, registered_ops, set_default_backend)


def _require_native() -> bool:
    """VAEBM_FAST_REQUIRE_NATIVE=1: a missing library fails these tests instead of weakening
    them."""
    return os.environ.get("VAEBM_FAST_REQUIRE_NATIVE") == "1"


@pytest.fixture
def reload_native(monkeypatch, tmp_path):
    """Forget the loading outcome before and after the test (the real library stays loaded).

    The first-use compile is off and its cache empty: a test turns it on only with a compile
    that cannot load a second copy of the library into this process."""
    monkeypatch.delenv("VAEBM_FAST_DISABLE_NATIVE", raising=False)
    monkeypatch.delenv("VAEBM_FAST_LIBRARY", raising=False)
    monkeypatch.setenv("VAEBM_FAST_JIT", "0")
    monkeypatch.setenv("VAEBM_FAST_CACHE_DIR", str(tmp_path / "cache"))
    _native._reset()
    yield
    _native._reset()


def _run_ops_expecting_eager(reason="no-build-isolation"):
    t, g = torch.randn(5, 7), torch.randn(5, 7)
    expected = t.clone()
    langevin_step_reference([expected], [g], step_size=0.1, seed=3, offset=2)
    assert langevin_step_([t], [g], step_size=0.1, seed=3, offset=2) == 37
    assert torch.equal(t, expected)  # "auto" fell back to the eager reference, bit for bit
    with pytest.raises(BackendUnavailableError, match=reason):
        langevin_step_([t], [g], step_size=0.1, seed=3, offset=2, backend="native")
    assert torch.equal(philox_normal(9, seed=1, offset=0),
                       philox_normal(9, seed=1, offset=0, backend="eager"))


def _collect_native_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if "native kernels unavailable" in str(w.message)]


def test_missing_extension_warns_once_and_falls_back(monkeypatch, reload_native):
    monkeypatch.setattr(_native, "_find_library", lambda: None)

    def use_ops_twice():
        _run_ops_expecting_eager()
        _run_ops_expecting_eager()

    caught = _collect_native_warnings(use_ops_twice)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "not installed" in message and "pip install --no-build-isolation ." in message
    assert "VAEBM_FAST_JIT=0" in message and "vaebm-fast build" in message
    assert "shadows" not in message
    assert issubclass(caught[0].category, RuntimeWarning)
    assert not _native.status().loaded


def test_a_failed_first_use_compile_warns_with_its_cause(monkeypatch, reload_native):
    monkeypatch.setattr(_native, "_find_library", lambda: None)
    monkeypatch.setenv("VAEBM_FAST_JIT", "1")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    caught = _collect_native_warnings(_run_ops_expecting_eager)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "compiling it on first use failed" in message and "no C++ compiler" in message
    assert "/nonexistent/c++" in message


def test_a_library_compiled_earlier_is_taken_from_the_cache(monkeypatch, reload_native):
    # No library installed and compiling off (VAEBM_FAST_JIT=0): what `vaebm-fast build` or an
    # earlier first use compiled for this torch is still used, and nothing is compiled.
    from vaebm_fast import _compile
    monkeypatch.setattr(_native, "_find_library", lambda: None)
    cached = os.path.join(_compile.cache_dir(), _compile.recipe().key, _compile.LIBRARY)
    os.makedirs(os.path.dirname(cached))
    open(cached, "w").close()
    monkeypatch.setattr(_compile, "ensure_library", lambda: pytest.fail("compiled again"))
    assert _native._compiled_library() == (cached, None)


def test_a_checkout_that_shadows_an_installed_library_says_so(monkeypatch, reload_native,
                                                               tmp_path):
    # A source checkout's vaebm_fast/ (no _C) imported instead of the site-packages copy that
    # has one: the warning names both folders instead of claiming nothing is installed.
    installed = tmp_path / "site-packages" / "vaebm_fast"
    installed.mkdir(parents=True)
    (installed / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.setattr(_native, "_find_library", lambda: None)
    caught = _collect_native_warnings(_run_ops_expecting_eager)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"shadows the vaebm_fast installed in {installed}" in message
    assert os.path.dirname(_native.__file__) in message


def test_stale_extension_is_refused(monkeypatch, reload_native):
    library = _native._held or _native._find_library()  # the copy this process can load
    if library is None:
        (pytest.fail if _require_native() else pytest.skip)("extension not built")
    monkeypatch.setattr(_native, "_find_library", lambda: library)
    monkeypatch.setattr(torch, "__version__", "0.0.1+other")
    caught = _collect_native_warnings(_run_ops_expecting_eager)
    assert len(caught) == 1
    assert "built for torch" in str(caught[0].message)
    assert "but torch 0.0.1+other is installed" in str(caught[0].message)


def test_unloadable_library(monkeypatch, reload_native, tmp_path):
    bogus = tmp_path / "_C.so"
    bogus.write_text("not a shared library")
    monkeypatch.setenv("VAEBM_FAST_LIBRARY", str(bogus))
    # as in a process that holds no library yet (a file that is not one runs no initialiser)
    monkeypatch.setattr(_native, "_held", None)
    monkeypatch.setattr(_native, "_ops_registered", lambda: False)
    caught = _collect_native_warnings(_run_ops_expecting_eager)
    assert len(caught) == 1 and "could not be loaded" in str(caught[0].message)


def test_a_second_copy_of_the_library_is_refused_not_loaded(monkeypatch, reload_native,
                                                           tmp_path):
    # Once a process holds the library, loading another copy of it (VAEBM_FAST_LIBRARY changed,
    # a rebuild at another path) would register its ops a second time in the copy's static
    # initialiser, which aborts the process inside dlopen: it is refused with the reason.
    if _native._held is None:
        if _native._find_library() is None:
            (pytest.fail if _require_native() else pytest.skip)("extension not built")
        assert _native.status().loaded, _native.status().reason
        _native._reset()
    held = _native._held
    copy = tmp_path / "_C.so"
    shutil.copyfile(held, copy)
    monkeypatch.setenv("VAEBM_FAST_LIBRARY", str(copy))
    caught = _collect_native_warnings(lambda: _run_ops_expecting_eager(reason="restart Python"))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{copy} was not loaded: this process already holds another copy" in message
    assert held in message
    assert str(copy) not in torch.ops.loaded_libraries and _native._held == held


def test_disabled_by_environment_is_silent(monkeypatch, reload_native):
    monkeypatch.setenv("VAEBM_FAST_DISABLE_NATIVE", "1")
    assert _collect_native_warnings(
        lambda: _run_ops_expecting_eager(reason="VAEBM_FAST_DISABLE_NATIVE")) == []
    assert "VAEBM_FAST_DISABLE_NATIVE" in _native.status().reason


def test_import_is_lazy():
    # A fresh interpreter: importing the package and its ops loads no library and touches no
    # device; the first op call loads it.
    code = (
        "import json, torch, vaebm_fast, vaebm_fast.ops, vaebm_fast.info\n"
        "before = sorted(torch.ops.loaded_libraries)\n"
        "cuda_init = torch.cuda.is_initialized()\n"
        "vaebm_fast.ops.philox_normal(4, seed=0, offset=0)\n"
        "print(json.dumps([before, cuda_init, sorted(torch.ops.loaded_libraries)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAEBM_FAST_")}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=repo)
    before, cuda_init, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before == [] and cuda_init is False
    if _native._find_library() is not None or _require_native():
        assert len(after) == 1 and "_C" in os.path.basename(after[0])


def test_default_backend_setting():
    assert get_default_backend() == "auto"
    with default_backend("eager"):
        assert get_default_backend() == "eager"
        t = torch.zeros(3, device="meta")
        with pytest.raises(BackendUnavailableError):  # naming native explicitly still raises
            langevin_step_([t], [t], step_size=0.1, seed=0, offset=0, backend="native")
    assert get_default_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        set_default_backend("fastest")
    with default_backend("native"):  # a default that cannot run here raises too
        t = torch.zeros(3, device="meta")
        with pytest.raises(BackendUnavailableError, match="meta"):
            langevin_step_([t], [t], step_size=0.1, seed=0, offset=0)


def test_backend_availability_reasons():
    cpu = backend_availability("langevin_step_", "cpu")
    assert cpu["eager"] is None
    assert (cpu["native"] is None) == _native.status().loaded
    cuda = backend_availability("langevin_step_", "cuda")  # a device type: nothing is queried
    if not _native.status().has_cuda_kernels:
        assert "CUDA" in cuda["native"] or not _native.status().loaded
    with pytest.raises(ValueError, match="unknown op"):
        backend_availability("no_such_op")


def test_info(one_thread):
    info = collect_info()
    json.dumps(info)  # plain data
    for key in ("torch", "torch_cuda", "triton", "cxx", "nvcc", "native", "ops", "cpu", "git"):
        assert key in info
    machine = machine_info()  # what the benchmark reports record
    assert (info["cpu"], info["usable_cores"], info["cpu_threads"], info["python"]) == (
        machine["cpu"], machine["usable_cores"], machine["torch_threads"], machine["python"])
    assert machine["device"] == "cpu" and "gpu" not in machine
    st = _native.status()
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda
    assert info["cpu_threads"] == torch.get_num_threads() == 1  # the setting, not the cores
    assert (info["native"]["loaded"], info["native"]["reason"], info["native"]["path"]) == (
        st.loaded, st.reason, st.path)
    assert info["heap_reuse"] == heap_reuse_available()
    assert info["default_backend"] == "auto"
    # Every registered op, on both device types, with the dispatcher's own verdicts; "auto"
    # names an available backend, and on the CPU never the Triton interpreter.
    assert sorted(info["ops"]) == sorted(info["auto"]) == registered_ops()
    for op, per_device in info["ops"].items():
        assert set(per_device) == {"cpu", "cuda"}
        for device, backends in per_device.items():
            assert backends == backend_availability(op, device)
            assert backends["eager"] is None
            assert backends[info["auto"][op][device]] is None
        assert info["auto"][op]["cpu"] != "triton"
    # langevin_step_ has a CPU kernel: "auto" runs it exactly when the library is loaded.
    assert (info["ops"]["langevin_step_"]["cpu"]["native"] is None) == st.loaded
    assert info["auto"]["langevin_step_"]["cpu"] == ("native" if st.loaded else "eager")
    # The report shows what was collected, op by op.
    text = format_info(info)
    assert "langevin_step_" in text and "philox_normal" in text and torch.__version__ in text
    for op, per_device in info["ops"].items():
        for device, backends in per_device.items():
            available = ", ".join(b for b, reason in backends.items() if reason is None)
            assert (f"    {device:5s} available: {available}; auto uses "
                    f"{info['auto'][op][device]}") in text
    # A default backend set by the user is what "auto" then means everywhere.
    with default_backend("eager"):
        eager = collect_info()
    assert eager["default_backend"] == "eager"
    assert all(choice == "eager" for per_device in eager["auto"].values()
               for choice in per_device.values())
