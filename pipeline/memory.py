"""Memory: the pool docpipe's own Arrow calls allocate from, and the process-wide knobs
that only the ``docpipe`` command turns.

:func:`arrow_pool` is passed explicitly to the Arrow calls of the run's end (reading
the journal back, compaction's spill, takes and casts, the results writer), so they
allocate from glibc's heap rather than Arrow's C++ default pool (mimalloc), which keeps
a heap per thread that touched it and hands little back. The Parquet reads of the
run's end (journal parts, the manifest's second pass) cannot take a pool: they run on
the calling thread without pre-buffering, so Arrow's CPU threads do not each grow a
mimalloc heap of their own. Nothing process-wide changes: the caller's default pool
stays what it was.

Issue 10, compaction and report of a finished 10 000-row folder in one process
(imports and manifest 96 MB): peak 180-203 MB before, 148-151 MB after; 1 000 000 rows:
250 MB before, 183 after (``docs/compaction_memory.py``, see the README's memory section). What stays in
the default pool: the Parquet reader's and writer's properties (page buffers,
decompression) and Arrow IPC's options, which pyarrow gives no per-call pool for.

:func:`release_memory` only returns garbage to the OS. :func:`use_lean_arrow_pool`
makes the system allocator Arrow's default memory pool for the whole process (for
Arrow's C++ parts too, when called before pyarrow loads: it sets
``ARROW_DEFAULT_MEMORY_POOL``), and :func:`steady_collector` changes the garbage
collector's schedule, which a library must not do behind its caller's back: only the
``docpipe`` command calls them (``run(...)`` and ``run_async(...)`` never do).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pyarrow is imported when used: use_lean_arrow_pool must run before it loads
    import pyarrow as pa


def arrow_pool() -> pa.MemoryPool:
    """The pool docpipe passes to its own Arrow calls (see the module docstring): the
    system allocator's, which returns large freed blocks at once and shares its free
    lists with Python's own objects, instead of keeping a heap of its own."""
    import pyarrow as pa

    return pa.system_memory_pool()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc only)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only), without a garbage collection:
    where the garbage was freed by reference counting (the run makes no reference
    cycles: at the end of a 10 000-row run a full collection found 0 objects before
    compaction and 9 after, at 9-10 ms each), the trim is the whole effect, at <1 ms."""
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
    """Make the system allocator Arrow's default memory pool for this process (the CLI
    calls this before pyarrow is imported; a library caller may too).
    ``ARROW_DEFAULT_MEMORY_POOL`` in the environment wins.

    Why the system pool: docpipe's own Arrow calls already allocate from it
    (:func:`arrow_pool`); what is left on the default pool are the calls pyarrow gives no
    pool for (Parquet reads of the manifest, the journal and the earlier nights of
    ``--reuse``, and Arrow's C++ internals), which otherwise keep heaps of their own beside
    glibc's. Arrow's C++ library reads its default pool from ``ARROW_DEFAULT_MEMORY_POOL``
    once, when pyarrow loads, and ``pa.set_memory_pool`` changes only what pyarrow's Python
    calls use; so before pyarrow is imported this sets the variable (the command's own
    process and the processes it starts, such as Ray's workers), after it only the latter.

    Measured with ``docpipe bench --rows 10000 --latency 0.2 --concurrency 100 --adaptive``
    (the memory-10k run, peak RSS), same code, one pool at a time: mimalloc (pyarrow's
    default) 201-203 MB; jemalloc through ``pa.set_memory_pool`` (this function until
    now) 164-175 MB; the system pool through ``pa.set_memory_pool`` alone 164-168 MB; the
    system pool through the variable 133-136 MB. The reuse-1m night: 318 MB with jemalloc."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    if "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
