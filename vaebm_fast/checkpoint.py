"""Checkpoints: atomic saving, safe loading with clear errors, and RNG state capture.

Format
------
A checkpoint is one ``torch.save`` file holding a plain dict of tensors, numbers, strings,
lists and dicts (nothing else, so it loads with ``torch.load(weights_only=True)``)::

    {
        "format_version": int, # FORMAT_VERSION of the writer; newer files are refused
        "kind": str,           # what it is, e.g. "vae", "ebm", "latent_ebm", "igebm"
        "config": dict,        # everything needed to rebuild the model and resume
        "model": dict,         # model.state_dict()
        "optimizer": dict,     # optimizer.state_dict() (optional for inference-only files)
        "step": int,           # training iterations done
        "rng": dict,           # capture_rng_state(), to resume the exact random stream
        ...                    # anything else (replay buffer, data order, ...)
    }

Only ``"model"`` is required by default when loading (``required_keys``); ``kind`` is checked
when the caller names the kind it expects.

Loading never runs code from the file: every load is ``torch.load(weights_only=True)``, whose
unpickler builds only tensors and plain Python containers and refuses anything else (a
``__reduce__`` payload, any class) with :class:`CheckpointError`. Decision: files of format 1
(before ``format_version`` existed) pickled NumPy's RNG state as an ``ndarray``; they still load,
with exactly the four NumPy globals an ``ndarray`` of ``uint32`` needs allowed
(``LEGACY_NUMPY_GLOBALS``). Those build arrays of plain numbers only: an array of Python
objects would still need its objects unpickled, which the weights-only unpickler refuses.

Writing is atomic: the file is written to a temporary file ``.NAME.PID.RAND.tmp`` in the same
directory, flushed and fsync-ed, then moved over the destination with ``os.replace``. A crash
or error mid-write leaves the previous checkpoint untouched (training "eventually explodes";
the last good checkpoint must survive); ``remove_stale_temp_files`` deletes the temporary
files of writers that were killed. ``save_checkpoint(..., keep_previous=True)`` also keeps the
file it replaces as ``NAME.prev.pt`` (``previous_path``).
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import secrets
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Union

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "save_checkpoint",
    "checkpoint_bytes",
    "load_checkpoint",
    "previous_path",
    "remove_stale_temp_files",
    "capture_rng_state",
    "restore_rng_state",
    "seed_rng_state",
    "write_atomically",
]

PathLike = Union[str, os.PathLike]

# 1: no "format_version" key, NumPy's RNG state pickled as (str, ndarray, int, int, float).
# 2: "format_version" key; every RNG state is tensors, ints, floats, strings and lists.
FORMAT_VERSION = 2

# What a format-1 file's NumPy RNG state needs beyond the weights-only defaults: the array
# class, its reconstructor (under its NumPy 1 and NumPy 2 module names) and the uint32 dtype.
LEGACY_NUMPY_GLOBALS = [
    np.ndarray,
    np.dtype,
    type(np.dtype("uint32")),
    (np.ndarray.__reduce__(np.zeros(0))[0], "numpy.core.multiarray._reconstruct"),
    (np.ndarray.__reduce__(np.zeros(0))[0], "numpy._core.multiarray._reconstruct"),
]

# write_atomically's temporary files: .NAME.PID.RAND.tmp
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, found, read, is not the kind expected, or does not
    fit the run that tries to use it."""


def previous_path(path: PathLike) -> Path:
    """Where ``save_checkpoint(path, ..., keep_previous=True)`` keeps the file it replaced:
    ``runs/x/vae.pt`` -> ``runs/x/vae.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def checkpoint_bytes(state: Dict[str, Any]) -> bytes:
    """``state`` (plus ``"format_version"``) as the bytes of a checkpoint file: a snapshot
    taken now that ``save_checkpoint`` can write later (the trainers write a step's state only
    once the next step has shown its weights to be healthy)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict such as {{'kind': ..., 'model': "
                        f"model.state_dict(), ...}} (got {type(state).__name__})")
    buffer = io.BytesIO()
    torch.save({**state, "format_version": FORMAT_VERSION}, buffer)
    return buffer.getvalue()


def save_checkpoint(path: PathLike, state: Union[Dict[str, Any], bytes], *,
                    keep_previous: bool = False) -> Path:
    """Write ``state`` (plus ``"format_version"``), or a snapshot made by
    ``checkpoint_bytes``, to ``path`` atomically, creating parent directories; return the path.

    keep_previous: first move the file already at ``path`` (if any) to ``previous_path(path)``
        (hard-linked, then the new file renamed over ``path``: ``path`` exists at every moment).

    Raises:
        TypeError: ``state`` is not a dict.
        CheckpointError: writing failed (the previous file at ``path``, if any, is intact and
            no temporary file is left behind).
    """
    if not isinstance(state, (dict, bytes)):
        raise TypeError(f"state must be a dict such as {{'kind': ..., 'model': "
                        f"model.state_dict(), ...}} (got {type(state).__name__})")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the directory {path.parent} for checkpoint "
                              f"{path}: {error}") from error
    try:
        data = state if isinstance(state, bytes) else checkpoint_bytes(state)
        if keep_previous and path.exists():
            _link_atomically(path, previous_path(path))
        write_atomically(path, lambda file: file.write(data))
    except Exception as error:
        raise CheckpointError(f"could not write checkpoint {path}: {error}; the previous "
                              f"file there (if any) is unchanged") from error
    return path


def _link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` (a hard link where the file system has them),
    replacing ``target`` in one rename."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, temp)
        except OSError:  # no hard links here (some network and FAT file systems): copy
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file ``.NAME.PID.RAND.tmp`` next to ``path``, fsync
    it, then move it over ``path`` with ``os.replace``, so readers see the old file or the new
    one, never a mix.

    The parent directory must exist. On any error the temporary file is removed and the error
    re-raised; ``path`` is untouched. A process killed mid-write leaves its temporary file
    behind: ``remove_stale_temp_files`` removes it later. Returns ``path`` as a ``Path``.
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


def remove_stale_temp_files(directory: PathLike) -> List[Path]:
    """Delete the temporary files (``.NAME.PID.RAND.tmp``) that ``write_atomically`` left in
    ``directory`` when its process was killed mid-write; return the paths deleted.

    A file is stale when no process with its PID is alive on this machine (a run directory
    written by processes of several machines at once would need another rule). Files of
    living processes, this one included, are left alone: they may be writes in progress.
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # gone already, or not ours to delete
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


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
    """Load a checkpoint written by ``save_checkpoint``, without running any code from it.

    Args:
        path: the checkpoint file.
        map_location: passed to ``torch.load`` (default: everything on the CPU).
        kind: if given, the checkpoint's ``"kind"`` must equal it.
        required_keys: keys the dict must have (default: ``("model",)``; pass ``()`` to accept
            any dict).

    Raises:
        CheckpointError: the file is missing, is a directory, is corrupt or truncated, holds
            objects other than tensors and plain data (refused unread: unpickling them could
            run code), is of a newer format version, is not a dict, lacks a required key, or
            is of another kind. The message is one line and names the path.
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
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(_unreadable_message(path, error)) from error

    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a "
                              f"checkpoint dict; was it written by save_checkpoint?")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}, newer than this vaebm_fast "
            f"reads (up to {FORMAT_VERSION}); it was written by a newer vaebm_fast: upgrade "
            f"vaebm_fast to load it")
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
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text and (
            found or _starts_like_a_pickle(path)):
        # The weights-only unpickler met something other than tensors and plain data: a
        # class, a function call (a __reduce__ payload), or a pickle opcode it does not run.
        # (Random bytes fail the same way, but do not start with pickle's PROTO opcode.)
        what = (f"the global {found[1]}" if found
                else "objects or pickle instructions that are not plain data")
        return (f"checkpoint {path} was refused: it holds {what}, which only full unpickling "
                f"could build, and full unpickling can run code from the file. vaebm_fast "
                f"writes only tensors and plain data, so this file was not written by "
                f"vaebm_fast or was altered; do not load it unless you trust its source")
    size = path.stat().st_size
    first_sentence = " ".join(text.split(". ")[0].split())  # torch's messages run on
    reason = f"{type(error).__name__}: {first_sentence}"
    previous = previous_path(path)
    fallback = (f"the checkpoint before it is {previous} (rename it to {path.name} to resume "
                f"from it)" if previous.exists() else "start over without it (--no-resume, or "
                "resume=False)")
    if size == 0 or not zipfile.is_zipfile(path):
        # torch.save writes a zip archive; without its central directory at the end, the
        # file was cut off (crash, full disk, interrupted copy) or is not a checkpoint at all.
        return (f"checkpoint {path} is corrupt or truncated ({size} bytes, not a complete "
                f"torch.save archive; {reason}); it was probably cut off by a crash, a full "
                f"disk or an interrupted copy: {fallback}")
    return f"checkpoint {path} could not be loaded ({reason}); if the file is damaged, {fallback}"


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether the file starts with pickle's PROTO opcode (protocol 2 or later), as a pickle
    written by torch.save's legacy format or by pickle.dump does."""
    try:
        with open(path, "rb") as file:
            head = file.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


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
    CUDA is available, every CUDA device's generator, as tensors and plain data (so a
    checkpoint holding them loads with ``weights_only=True``). Restore with
    ``restore_rng_state``.

    ``"python"``: [version, [625 ints], gauss or None]; ``"numpy"``: {"bit_generator": str,
    "key": [624 ints], "pos", "has_gauss": int, "cached_gaussian": float}; ``"torch"``: uint8
    tensor; ``"cuda"``: list of uint8 tensors.
    """
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():  # asked here, at call time, never at import
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators captured by ``capture_rng_state`` (or by format-1 files, whose
    NumPy state is a tuple holding an array).

    Entries that are absent are left alone; the CUDA states are restored only when CUDA is
    available and the number of devices matches (otherwise with a warning). Tensor states
    loaded onto a GPU (through ``map_location``) are moved back to the CPU, where torch expects
    them.
    """
    if "python" in state:
        random.setstate(_as_python_state(state["python"]))
    if "numpy" in state:
        numpy_state = state["numpy"]
        if isinstance(numpy_state, dict):
            numpy_state = (numpy_state["bit_generator"],
                           np.asarray(numpy_state["key"], dtype=np.uint32), numpy_state["pos"],
                           numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        np.random.set_state(numpy_state)
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn(f"not restoring the CUDA RNG states: captured for {len(cuda_states)} "
                          f"devices, {torch.cuda.device_count()} visible now", stacklevel=2)


def seed_rng_state(seed: int) -> None:
    """Seed the generators ``capture_rng_state`` captures: Python's ``random``, NumPy's global
    RNG (with ``seed`` mod 2**32) and torch's (every CUDA device's included)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _as_python_state(python_state: Any) -> tuple:
    # random.setstate needs tuples all the way down; checkpoints (and JSON) hold lists.
    version, internal, gauss = python_state
    return (version, tuple(internal), gauss)
