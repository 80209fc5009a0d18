"""How the command line reports failures: exit codes and one-line messages.

Bad input (a flag, a config file, a checkpoint, a path) is one ``error: ...`` line on stderr and
exit code 2; a diverged run, a missing optional dependency or a failed compile is one line and
exit code 1; under torchrun, a lost connection to another process is one line and exit code 1
(that process's own output says why); anything else is a bug, reported in one line (exit code
1) that says how to see the traceback (``VAEBM_FAST_TRACEBACK=1``).
"""
from __future__ import annotations

import os
import sys



TRACEBACK_ENV = "VAEBM_FAST_TRACEBACK"


EXIT_BAD_INPUT = 2  # also argparse's code for a usage error


EXIT_FAILED = 1     # the run diverged, or an internal error


class UsageError(ValueError):
    """Bad input found by the CLI itself (a flag, a config file, a checkpoint's contents)."""


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (multi-line library messages joined)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def _silence_stdout() -> None:
    """After a closed pipe (`vaebm-fast info | head`), send what is left to /dev/null so the
    interpreter's final flush does not raise again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _lost_another_process(e: BaseException) -> bool:
    """torch.distributed's errors, and gloo's plain RuntimeError when a peer's socket closes
    (a process of the run died), seen only with an initialised process group."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError)
        and any(text in str(e) for text in ("Connection reset by peer",
                                            "Connection closed by peer")))


def _exit_code_and_message(e: BaseException) -> tuple[int, str | None]:
    """What :func:`main` prints and returns for an exception a command raised."""
    from .._compile import CompileError
    from .._requirements import MissingExtraError
    from ..checkpoint import CheckpointError
    from ..ops import BackendUnavailableError
    if isinstance(e, BrokenPipeError):
        _silence_stdout()
        return EXIT_FAILED, None
    if isinstance(e, KeyboardInterrupt):
        return 130, "error: interrupted"
    if isinstance(e, SystemExit):  # a command's own `raise SystemExit("error: ...")`
        if e.code is None or isinstance(e.code, int):
            return e.code or 0, None
        message = _one_line(Exception(e.code))
        said = message.startswith("error:") or ": error: " in message  # "vaebm-fast X: error:"
        return EXIT_BAD_INPUT, message if said else f"error: {message}"
    if isinstance(e, FloatingPointError):  # TrainingDiverged / ChainDivergedError
        return EXIT_FAILED, f"error: {_one_line(e)}"
    if isinstance(e, RuntimeError) and str(e).startswith("Error(s) in loading state_dict"):
        # Resuming (or loading) weights of another architecture than the one configured now.
        return EXIT_BAD_INPUT, (
            "error: a checkpoint's weights do not fit the model built from the current dataset, "
            f"preset and --config ({_one_line(e)[:200]}...); rerun with the settings it was "
            "trained with, or pass another --out (or --no-resume to start over)")
    if _lost_another_process(e):
        return EXIT_FAILED, (f"error: another process of this run failed or could not be "
                             f"reached ({_one_line(e)[:200]}); its own output says why")
    if isinstance(e, (MissingExtraError, CompileError)):  # the installation, not the input
        return EXIT_FAILED, f"error: {_one_line(e)}"
    if isinstance(e, (ValueError, TypeError, CheckpointError, BackendUnavailableError, OSError)):
        return EXIT_BAD_INPUT, f"error: {_one_line(e)}"
    return EXIT_FAILED, (f"error: internal error ({type(e).__name__}: {_one_line(e)[:300]}); "
                         f"this is a bug in vaebm-fast: rerun with {TRACEBACK_ENV}=1 to see the "
                         "traceback, and please report it")
