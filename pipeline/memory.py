"""Memory: what the run does for its own footprint, and the process-wide knobs.

:func:`release_memory` only returns garbage to the OS. :func:`use_lean_arrow_pool`
changes Arrow's default memory pool for the whole process and :func:`steady_collector`
the garbage collector's schedule, which a library must not do behind its caller's
back: only the ``docpipe`` command calls them (``run(...)`` and ``run_async(...)`` never do).

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


#: The collector's young-generation threshold during ``docpipe run`` (CPython's default: 700).
RUN_GC_THRESHOLD = 10_000


def steady_collector() -> None:
    """Collect the young generation every :data:`RUN_GC_THRESHOLD` net allocations
    instead of every 700, and freeze what start-up built (imports, settings) so full
    collections skip it. Process-wide: the ``docpipe run`` command calls it just before
    the run, never the library.

    Why (issue 10, 10 000 rows at 200 ms and C=100, HEADs on): each young collection
    walks the objects of the ~100 requests in flight (aiohttp's responses, tasks,
    futures, the HEADs' documents), 2-11 ms of CPU, and found nothing to free (the run
    makes no reference cycles), ~70 times per 3 000 rows; two full collections over
    pyarrow's, numpy's and aiohttp's objects took ~100 ms each, during which no answer
    was read. Together ~110 us of client CPU per request, ~9 % of it; with this, 3 young
    collections per 3 000 rows and no full one. Young cyclic garbage (exceptions'
    tracebacks under faults) waits for at most that many allocations: a few MB."""
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, RUN_GC_THRESHOLD), middle, old)


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
