"""What this installation can run: versions, compilers, and the backend of every op.

``collect_info()`` returns a plain dict (JSON-serialisable) and ``format_info()`` a readable
report of it; the CLI prints the latter. Collecting loads the native extension (warning once if
it cannot) and asks torch whether CUDA is available, so call it explicitly, not at import.
``machine_info(device)`` is the part that describes the machine; the benchmark reports record
it beside every measurement.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ._toolchain import find_nvcc

__all__ = ["collect_info", "format_info", "machine_info"]

_DEVICE_TYPES = ("cpu", "cuda")
_CHECKOUT = Path(__file__).resolve().parents[1]  # the source tree, when running from one


def _package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _first_line_of(cmd) -> Optional[str]:
    """First non-empty line of ``cmd``'s output, or None if it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0] if lines else None


def _cxx_version() -> Optional[str]:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return _first_line_of([cxx, "--version"]) if cxx else None


def _nvcc_version() -> Optional[str]:
    nvcc = find_nvcc()
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    release = [line.strip() for line in out.splitlines() if "release" in line]
    return f"{release[0]} ({nvcc})" if release else nvcc


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> Optional[str]:
    """Short commit of the source tree this package runs from (None outside a git checkout),
    marked when the tree has uncommitted changes."""
    if not (_CHECKOUT / ".git").exists():  # an installed copy: a repository around it is not ours
        return None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_CHECKOUT, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=_CHECKOUT, text=True,
                               capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + (" (with uncommitted changes)" if dirty else "")


def machine_info(device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """The machine, and the code on it: what a measurement must be quoted with.

    Returns a dict with keys ``cpu`` (model name), ``cpu_count``, ``usable_cores`` (the CPUs
    this process may run on), ``torch``, ``torch_threads``, ``python``, ``platform``,
    ``device`` (``device`` as a string), ``git`` (short commit of the source tree, or None)
    and, for a CUDA ``device``, ``gpu`` (its name). Queries the GPU only for a CUDA ``device``.
    """
    device = torch.device(device)
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cores = os.cpu_count()
    info = {
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "platform": platform.platform(),
        "device": str(device), "git": _git_revision(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def collect_info() -> Dict[str, Any]:
    """Versions, compilers, native-extension status and per-op backend availability.

    Returns a dict with keys ``vaebm_fast``, ``python``, ``platform``, ``torch``,
    ``torch_cuda`` (CUDA version torch was built with, or None), ``cuda_devices`` (names),
    ``cpu`` (model name), ``usable_cores``, ``cpu_threads`` (torch's), ``git`` (source commit
    or None), ``triton``, ``cxx``, ``nvcc``, ``native`` (loaded / reason / path /
    build_info), ``heap_reuse`` (None when FastSampler's CPU chains can keep freed memory in
    the heap when asked to, else why not), ``default_backend`` and ``ops``:
    ``{op: {device_type: {backend: None if available else reason}}}`` and ``auto``:
    ``{op: {device_type: the backend "auto" picks there}}``.
    """
    from . import _heap, _native
    from . import ops  # registers every op with the dispatcher
    from .ops import _dispatch

    native = _native.status()
    machine = machine_info("cpu")
    cuda_devices = []
    if torch.cuda.is_available():
        cuda_devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "vaebm_fast": _package_version("vaebm_fast"),
        "python": machine["python"],
        "platform": machine["platform"],
        "torch": machine["torch"],
        "torch_cuda": torch.version.cuda,
        "cuda_devices": cuda_devices,
        "cpu": machine["cpu"],
        "usable_cores": machine["usable_cores"],
        "cpu_threads": machine["torch_threads"],
        "git": machine["git"],
        "triton": _package_version("triton"),
        "cxx": _cxx_version(),
        "nvcc": _nvcc_version(),
        "native": {"loaded": native.loaded, "reason": native.reason, "path": native.path,
                   "build_info": dict(native.build_info)},
        "heap_reuse": _heap.heap_reuse_available(),
        "default_backend": ops.get_default_backend(),
        "ops": {op: {dev: dict(_dispatch.backend_availability(op, dev))
                     for dev in _DEVICE_TYPES}
                for op in _dispatch.registered_ops()},
        "auto": {op: {dev: _dispatch.resolve_backend(op, "auto", dev) for dev in _DEVICE_TYPES}
                 for op in _dispatch.registered_ops()},
    }


def _heap_line() -> str:
    """FastSampler's default for CPU chains: heap reuse is opt-in (vaebm_fast._heap)."""
    from . import _heap
    try:
        on = _heap.heap_reuse_requested()
    except ValueError as exc:
        return f"off ({exc})"
    if on:
        return "on by default (VAEBM_FAST_HEAP_REUSE=1; glibc mallopt)"
    return "off by default (opt in: FastSampler(heap_reuse=True) or VAEBM_FAST_HEAP_REUSE=1)"


def format_info(info: Optional[Dict[str, Any]] = None) -> str:
    """A readable report of :func:`collect_info` (collected now unless ``info`` is given)."""
    info = collect_info() if info is None else info
    none = "not found"
    native = info["native"]
    lines = [
        f"vaebm_fast   {info['vaebm_fast'] or 'not installed (running from a checkout)'}"
        + (f", source at commit {info['git']}" if info.get("git") else ""),
        f"python       {info['python']} on {info['platform']}",
        f"CPU          {info['cpu']}, {info['usable_cores']} usable cores",
        f"torch        {info['torch']} (CUDA build: {info['torch_cuda'] or 'no'}; "
        f"{info['cpu_threads']} CPU threads)",
        f"GPUs         {', '.join(info['cuda_devices']) or 'none visible'}",
        f"triton       {info['triton'] or none}",
        f"C++ compiler {info['cxx'] or none}",
        f"nvcc         {info['nvcc'] or none}",
    ]
    if native["loaded"]:
        build = ", ".join(f"{k}={v}" for k, v in native["build_info"].items())
        lines.append(f"native       loaded from {native['path']} ({build})")
    else:
        lines.append(f"native       unavailable: {native['reason']}")
    reuse = info.get("heap_reuse")
    lines.append(f"CPU chains   freed memory kept in the heap: "
                 f"{_heap_line() if reuse is None else 'unavailable, ' + reuse}")
    lines.append(f"default backend: {info['default_backend']}")
    lines.append("ops (backend: available, or why not):")
    for op, per_device in info["ops"].items():
        lines.append(f"  {op}")
        for dev, backends in per_device.items():
            ok = [b for b, reason in backends.items() if reason is None]
            lines.append(f"    {dev:5s} available: {', '.join(ok) or 'none'}; "
                         f"auto uses {info['auto'][op][dev]}")
            for b, reason in backends.items():
                if reason is not None:
                    lines.append(f"          {b}: {reason}")
    return "\n".join(lines)
