"""One request per distinct request_id: the hash set and the bookkeeping of repeats."""

from __future__ import annotations

import numpy as np

from pipeline.dedupe import Dedupe, HashSet
from pipeline.records import Row, Status


def test_hash_set_finds_every_added_hash_and_nothing_else_across_merges() -> None:
    seen = HashSet()
    rng = np.random.default_rng(7)
    added = rng.integers(-(2**62), 2**62, size=50_000, dtype=np.int64)
    for chunk in np.array_split(added, 97):  # many small batches: runs merge as they grow
        seen.add(chunk)
    assert len(seen) == len(added) and len(seen._runs) <= 17
    assert seen.contains(added).all()
    assert not seen.contains(added + 1).any()


def _rows(ids: list[str]) -> list[Row]:
    return [Row(index=i, request_id=r, file_url="https://h/x", question="q", content="c") for i, r in enumerate(ids)]


def test_repeats_within_a_batch_and_across_batches_wait_for_their_twin() -> None:
    d = Dedupe()
    first = d.repeats_in(_rows(["a", "b", "a"]))
    assert first.tolist() == [False, False, True]
    assert d.repeat(_rows(["a"])[0]) is None  # a is in flight: the repeat waits
    assert d.repeats_in(_rows(["b", "c"])).tolist() == [True, False]
    assert d.repeat(_rows(["b"])[0]) is None
    from pipeline.pool import invalid_outcome

    failed = invalid_outcome(Row(index=0, request_id="b", file_url="", question="q", content="c", invalid="x"))
    assert d.settled(failed) == 1  # b's one waiting repeat gets b's outcome
    assert d.repeats_in(_rows(["b"])).tolist() == [True]
    assert d.repeat(_rows(["b"])[0]) == Status.FAILED  # b is done: failed
