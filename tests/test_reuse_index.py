"""The reuse index's compact columns (pipeline/reuse.py) and the isolated memory measurement
of a reuse night (pipeline/reusemem.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.docmeta import DocMeta
from pipeline.reuse import _NO_TIME, _stamps, etag_hash, stamp_of
from pipeline.reusemem import measure_reuse_memory


def test_stored_stamps_equal_tonights_and_tell_changes() -> None:
    """The stamp of a stored (Last-Modified, size) pair, computed column-wise, equals the one
    computed from tonight's HEAD; a changed time or size, or a missing one, does not match."""
    rng = np.random.default_rng(7)
    lm = rng.integers(1_600_000_000, 1_900_000_000, 500, dtype=np.int64) * 1_000_000
    size = rng.integers(0, 1 << 40, 500, dtype=np.int64)
    stored = _stamps(lm, size)
    tonight = [stamp_of(int(t) / 1e6, int(s)) for t, s in zip(lm, size, strict=True)]
    assert stored.tolist() == tonight and 0 not in tonight
    assert stamp_of(int(lm[0]) / 1e6 + 1, int(size[0])) != tonight[0]
    assert stamp_of(int(lm[0]) / 1e6, int(size[0]) + 1) != tonight[0]
    assert _stamps(np.array([_NO_TIME, 5]), np.array([3, -1])).tolist() == [0, 0]
    assert stamp_of(None, 3) == stamp_of(5.0, None) == 0


def test_only_strong_etags_are_hashed() -> None:
    assert etag_hash('W/"a"') == etag_hash(None) == etag_hash("") == 0
    assert etag_hash('"a"') != 0 and etag_hash('"a"') != etag_hash('"b"')
    assert DocMeta('"a"', None, None).strong_etag and not DocMeta('W/"a"', None, None).strong_etag


def test_isolated_reuse_night_reuses_every_row_and_reports_its_phases(tmp_path: Path) -> None:
    """The measurement behind ``docpipe bench --scenario reuse-mem``, at 2 000 rows: the index
    alone, then a night with HEADs answered in-process that reuses every row (no gateway listens)."""
    result = measure_reuse_memory(tmp_path, rows=2000, per_doc=4)
    checks = {c.name: c for c in result.checks}
    assert checks["index: exit code"].passed and checks["night: exit code"].passed
    assert checks["night: rows reused"].value == 2000
    phases = {name.split(":")[0] for name in checks if "/" in name}
    assert phases == {"index/index", "night/run", "night/index", "night/compaction", "night/report"}


def test_a_closed_gate_is_not_kept_alive_by_the_runs_heads() -> None:
    """The runner keeps its DocHeads (their counts) through compaction; the HEADs' ``on_done``
    held the gate, and with it the reuse index and the dedupe hashes, under compaction's peak."""
    import asyncio
    import gc
    import weakref

    from pipeline.control import StopControl
    from pipeline.docmeta import DocHeads
    from pipeline.incremental import Gate

    async def main() -> tuple[DocHeads, weakref.ref[Gate]]:
        heads = DocHeads(timeout=1.0, concurrency=4)
        gate = Gate(record=lambda o: None, amend=lambda o: None, repeats=lambda s, n: None, stop=StopControl(),
                    heads=heads, index=None)  # fmt: skip
        assert heads.on_done is not None
        await gate.close()
        return heads, weakref.ref(gate)

    heads, gate = asyncio.run(main())
    gc.collect()
    assert heads.on_done is None and gate() is None
