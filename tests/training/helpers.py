"""Running the command line from a training test."""
import contextlib
import io

from vaebm_fast.cli import main


def cli_error(*argv) -> str:
    """Run the command line; it must fail with one ``error: ...`` line, the last on stderr
    (training logs may come before it); return that line."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    lines = stderr.getvalue().splitlines()
    assert code != 0 and lines and lines[-1].startswith("error: "), (code, stderr.getvalue())
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]
    return lines[-1]
