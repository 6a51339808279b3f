"""Membership and position lookups over millions of request_ids without a Python set.

Ids are reduced to 64-bit hashes (Python's ``hash`` of the string: stable within
one process, which is all these lookups need) kept in sorted numpy arrays, so a
million ids cost 12 MB (8-byte hashes, 4-byte positions) instead of the ~100 MB of a ``set`` of strings, and a
lookup is one vectorised ``searchsorted``. Two different ids sharing a 64-bit
hash (odds of about 1 in 10^7 for a million ids) would be confused; that is
accepted here, and the compaction join still compares the ids themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa


def hash_ids(ids: Sequence[str | None] | pa.Array[Any] | pa.ChunkedArray[Any]) -> np.ndarray:
    values = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else ids
    return np.fromiter(map(hash, values), dtype=np.int64, count=len(values))


class IdIndex:
    """Sorted hashes of ids, with each id's position in the order it was given."""

    def __init__(self, hashes: np.ndarray) -> None:
        order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[order]
        # positions as int32 below 2**31 ids: 4 bytes a row less (4 MB at a million)
        self.order = order.astype(np.int32) if len(hashes) < 2**31 else order
        self.size = len(hashes)

    @classmethod
    def of(cls, chunks: Iterable[np.ndarray]) -> IdIndex:
        parts = list(chunks)
        return cls(np.concatenate(parts) if parts else np.empty(0, dtype=np.int64))

    @property
    def has_duplicates(self) -> bool:
        return bool(self.size > 1 and np.any(self.sorted[1:] == self.sorted[:-1]))

    def positions(self, hashes: np.ndarray) -> np.ndarray:
        """Position of each hash in the original order (the first, if repeated), or -1."""
        if self.size == 0:
            return np.full(len(hashes), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(self.sorted, hashes), self.size - 1)
        return np.where(self.sorted[i] == hashes, self.order[i], -1).astype(np.int64, copy=False)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        return self.positions(hashes) >= 0

    def __len__(self) -> int:
        return self.size
