"""Crash-test harness: ``docpipe`` held at one named storage checkpoint so a test can kill it there.

::

    python -m tests.crashpoint POINT MARKER docpipe-args...

installs a hook with :func:`pipeline.storage.set_checkpoint_hook` that, when the
run reaches checkpoint ``POINT`` (e.g. ``before-replace:results.parquet``,
``fold``), creates the file ``MARKER`` and sleeps :data:`PAUSE_S`; then it runs
the ``docpipe`` command line with the remaining arguments. The hook exists only
in this subprocess: the library itself reads no environment variable and has no
hook installed anywhere else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import cli, storage

ROOT = Path(__file__).resolve().parent.parent

#: Long enough for any test to notice the marker and kill the process.
PAUSE_S = 60.0


def main(argv: list[str]) -> None:
    point, marker, *args = argv

    def pause(at: str) -> None:
        if at == point:
            Path(marker).touch()
            time.sleep(PAUSE_S)

    storage.set_checkpoint_hook(pause)
    sys.argv = ["docpipe", *args]
    cli.main()


def spawn_paused(point: str, marker: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``docpipe ARGS`` in a real subprocess that pauses at ``point`` (and then
    creates ``marker``), to be killed there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APICORE_", "OPENAI_"))}
    return subprocess.Popen([sys.executable, "-m", "tests.crashpoint", point, str(marker), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
