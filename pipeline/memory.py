"""Memory: what the run does for its own footprint, and the one process-wide knob.

:func:`release_memory` only returns garbage to the OS. :func:`use_lean_arrow_pool`
changes Arrow's default memory pool for the whole process, which a library must
not do behind its caller's back: only the ``docpipe`` command calls it, at start-up.

What it cannot reach (issue 10, measured at 10 000 rows): the Parquet reader's and
writer's properties and Arrow IPC's options take Arrow's C++ default pool (mimalloc),
which ``pa.set_memory_pool`` does not change and pyarrow gives no per-call pool for.
Compaction leaves ~30 MB there (RSS 111 MB before it, 165 after); only
``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` set before pyarrow loads reaches it (131 after),
an environment change the command must not make behind the user's back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def use_lean_arrow_pool() -> None:
    """Make jemalloc Arrow's memory pool for this process (the CLI calls this; a library
    caller may too). jemalloc hands Arrow's freed buffers back where mimalloc (the
    default) and glibc keep them: 1M-row compaction peaked at 230 MB against 257 and
    272. ``ARROW_DEFAULT_MEMORY_POOL`` in the environment wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())
