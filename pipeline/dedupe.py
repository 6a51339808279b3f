"""One request per distinct request in a run: rows sharing a request_id are sent once.

A manifest without an ``id`` column may repeat a request (the same question about
the same document twice, the same model and parameters): its rows share a
``request_id``, and the journal keeps one outcome per ``request_id``, which
compaction gives to every row of that id. So only the first such row needs a
request; the others ride on its outcome (:class:`Dedupe`).

Memory stays flat: what was dispatched this run is a :class:`HashSet` of 64-bit
hashes (8 bytes a row, in sorted numpy runs, merged as they grow), and only
rows still in flight are in a dict. Two distinct ids sharing a 64-bit hash would
make the second wait for the first's outcome and, at compaction, stay without one
(counted pending, asked by the next run): odds of ~1 in 10^7 per million rows,
accepted as in :mod:`pipeline.idset`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .records import Outcome, Row, Status


class HashSet:
    """A growing set of int64 hashes as sorted runs (a log-structured merge): adding a
    batch is one sort, a lookup one ``searchsorted`` per run, and there are at most
    ~log2(n) runs."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=np.bool_)
        for run in self._runs:
            i = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[i] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        if not len(hashes):
            return
        self._runs.append(np.sort(hashes))
        while len(self._runs) > 1 and len(self._runs[-1]) * 2 >= len(self._runs[-2]):
            top = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], top]), kind="stable")


class Dedupe:
    """Which rows of a batch are repeats of a request this run already dispatched, and the
    progress counts of those repeats once their twin has an outcome."""

    def __init__(self) -> None:
        self.seen = HashSet()
        self.open: dict[int, int] = {}  # hash of a dispatched id without an outcome yet -> repeats waiting
        self.failed: set[int] = set()  # hashes of ids whose outcome this run is failed (few)
        self.repeats = 0  # rows that rode on another row's request

    def repeats_in(self, rows: Sequence[Row]) -> np.ndarray:
        """A mask of the rows that repeat an earlier row's request_id (this batch or before);
        the others are marked dispatched."""
        hashes = np.fromiter((hash(r.request_id) for r in rows), dtype=np.int64, count=len(rows))
        _, first = np.unique(hashes, return_index=True)
        repeat = np.ones(len(rows), dtype=np.bool_)
        repeat[first] = False
        repeat |= self.seen.contains(hashes)
        self.seen.add(hashes[~repeat])
        for i in np.flatnonzero(~repeat).tolist():
            self.open[int(hashes[i])] = 0
        return repeat

    def repeat(self, row: Row) -> Status | None:
        """Note a repeated row; its status when its twin already has one (else None: later)."""
        self.repeats += 1
        h = hash(row.request_id)
        if h in self.open:
            self.open[h] += 1
            return None
        return Status.FAILED if h in self.failed else Status.OK

    def settled(self, outcome: Outcome) -> int:
        """The twin ``outcome`` arrived: how many repeats waited for it."""
        h = hash(outcome.request_id)
        if outcome.status != Status.OK:
            self.failed.add(h)
        else:
            self.failed.discard(h)
        return self.open.pop(h, 0)
