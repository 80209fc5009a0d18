"""Checkpoints: atomic saving, loading with clear errors, and RNG state capture.

Format
------
A checkpoint is one ``torch.save`` file holding a plain dict::

    {
        "kind": str,          # what it is, e.g. "vae", "ebm", "latent_ebm", "igebm"
        "config": dict,       # everything needed to rebuild the model and resume
        "model": dict,        # model.state_dict()
        "optimizer": dict,    # optimizer.state_dict() (optional for inference-only files)
        "step": int,          # training iterations done
        "rng": dict,          # capture_rng_state(), to resume the exact random stream
        ...                   # anything else (replay buffer, metrics, ...)
    }

Only ``"model"`` is required by default when loading (``required_keys``); ``kind`` is checked
when the caller names the kind it expects.

Writing is atomic: the file is written to a temporary file in the same directory, flushed and
fsync-ed, then moved over the destination with ``os.replace``. A crash or error mid-write leaves
the previous checkpoint untouched (training "eventually explodes"; the last good checkpoint
must survive).

Loading uses ``torch.load(weights_only=False)``: our files hold configs, RNG states (NumPy's is
a tuple with an array) and optimizer states, which the weights-only unpickler rejects. Full
unpickling can run code, so only load checkpoints you (or someone you trust) wrote.
"""

from __future__ import annotations

import os
import random
import secrets
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Optional, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "write_atomically",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found, read, or is not the kind expected."""


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, creating parent directories; return the path.

    Raises:
        TypeError: ``state`` is not a dict.
        CheckpointError: writing failed (the previous file at ``path``, if any, is intact and
            no temporary file is left behind).
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict such as {{'kind': ..., 'model': "
                        f"model.state_dict(), ...}} (got {type(state).__name__})")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the directory {path.parent} for checkpoint "
                              f"{path}: {error}") from error

    try:
        write_atomically(path, lambda file: torch.save(state, file))
    except Exception as error:
        raise CheckpointError(f"could not write checkpoint {path}: {error}; the previous "
                              f"file there (if any) is unchanged") from error
    return path


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then move it over
    ``path`` with ``os.replace``, so readers see the old file or the new one, never a mix.

    The parent directory must exist. On any error the temporary file is removed and the error
    re-raised; ``path`` is untouched. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    # A unique name in the same directory (so os.replace is a rename within one file system),
    # created through os.open so the file gets the usual umask-based permissions.
    temp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        temp_path.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: PathLike,
    map_location: Any = "cpu",
    *,
    kind: Optional[str] = None,
    required_keys: Iterable[str] = ("model",),
) -> Dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``.

    Args:
        path: the checkpoint file.
        map_location: passed to ``torch.load`` (default: everything on the CPU).
        kind: if given, the checkpoint's ``"kind"`` must equal it.
        required_keys: keys the dict must have (default: ``("model",)``; pass ``()`` to accept
            any dict).

    Raises:
        CheckpointError: the file is missing, is a directory, is corrupt or truncated, is not a
            dict, lacks a required key, or is of another kind. The message names the path.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory; pass the checkpoint "
                              f"file inside it{_list_checkpoints(path)}")
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: the file does not exist. Checkpoints are written by the "
            f"trainers (through vaebm_fast.checkpoint.save_checkpoint); train first, or check "
            f"the path{_list_checkpoints(path.parent)}")

    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(_unreadable_message(path, error)) from error

    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a "
                              f"checkpoint dict; was it written by save_checkpoint?")
    missing = [key for key in required_keys if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks the key(s) {missing} (it has {sorted(map(str, state))}); "
            f"it is not the kind of checkpoint expected here")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} has kind {state.get('kind')!r}, but kind "
                              f"{kind!r} is needed here; pass a {kind} checkpoint")
    return state


def _unreadable_message(path: Path, error: Exception) -> str:
    size = path.stat().st_size
    first_sentence = str(error).split(". ")[0]  # torch's messages run on for a paragraph
    reason = f"{type(error).__name__}: {first_sentence}"
    if size == 0 or not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; without its central directory at the end, the
        # file was cut off (crash, full disk, interrupted copy) or is not a checkpoint at all.
        return (f"checkpoint {path} is corrupt or truncated ({size} bytes, not a complete "
                f"torch.save archive; {reason}); it was probably cut off by a crash, a full "
                f"disk or an interrupted copy — load the previous checkpoint instead")
    return (f"checkpoint {path} could not be loaded ({reason}); if the file is damaged, load "
            f"the previous checkpoint instead")


def _list_checkpoints(directory: Path, limit: int = 5) -> str:
    """A ' (found there: a.pt, b.pt)' suffix naming checkpoint-like files in ``directory``."""
    try:
        names = sorted(p.name for p in directory.iterdir()
                       if p.is_file() and p.suffix in (".pt", ".pth", ".ckpt"))
    except OSError:
        return ""
    if not names:
        return ""
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f" (checkpoint files in {directory}: {shown})"


def capture_rng_state() -> Dict[str, Any]:
    """The states of Python's ``random``, NumPy's global RNG, torch's CPU generator and, when
    CUDA is available, every CUDA device's generator. Restore with ``restore_rng_state``."""
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # asked here, at call time, never at import
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators captured by ``capture_rng_state``.

    Entries that are absent are left alone; the CUDA states are restored only when CUDA is
    available and the number of devices matches (otherwise with a warning). Tensor states
    loaded onto a GPU (through ``map_location``) are moved back to the CPU, where torch expects
    them.
    """
    if "python" in state:
        random.setstate(_as_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn(f"not restoring the CUDA RNG states: captured for {len(cuda_states)} "
                          f"devices, {torch.cuda.device_count()} visible now", stacklevel=2)


def _as_python_state(python_state: Any) -> tuple:
    # random.setstate needs tuples all the way down; a JSON or YAML round trip gives lists.
    version, internal, gauss = python_state
    return (version, tuple(internal), gauss)
