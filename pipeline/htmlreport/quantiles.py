"""Exact percentiles of a column read in batches, in fixed memory (a radix selection).

``docpipe summary`` takes p50/p95/p99 over every latency (numpy's/pandas' linear
interpolation), and the report must show the same numbers, so an estimate (a
t-digest, a log histogram) would not do; keeping every value costs 8 bytes a row.
Instead each float is mapped to a 64-bit key that sorts as the float does, and the
keys are narrowed 16 bits per pass: a pass counts, for each wanted rank, the keys
of its current prefix by their next 16 bits (a 65 536-bin histogram), which fixes
the next 16 bits of the value at that rank. Once the bin holding a rank has at most
:data:`COLLECT` values, the next pass keeps those values and sorts them. Memory is
a few histograms and at most ``COLLECT`` values per rank; most columns take two
passes (a column of identical values takes at most four).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLLECT = 1 << 16  # values kept per rank for the final sort
_STEP = 16
_BINS = 1 << _STEP
_SIGN = np.uint64(1 << 63)

Floats = np.ndarray[Any, np.dtype[np.float64]]
Keys = np.ndarray[Any, np.dtype[np.uint64]]


def keys(values: Floats) -> Keys:
    """Unsigned keys in the order of the floats (NaN must be dropped first)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def value_of(key: int) -> float:
    """The float a key stands for (the inverse of :func:`keys`)."""
    k = np.uint64(key)
    bits = k & ~_SIGN if k & _SIGN else ~k
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


@dataclass
class _Rank:
    """Where the search for the value at ``rank`` (0-based, ascending) stands."""

    rank: int
    prefix: int = 0  # the key's top (64 - shift) bits, fixed so far
    shift: int = 64  # bits still unknown
    below: int = 0  # values whose key is below every key with this prefix
    count: int = -1  # values with this prefix (-1: not counted yet)
    hist: np.ndarray[Any, np.dtype[np.int64]] | None = None  # this pass's counts by the next 16 bits
    kept: list[Floats] = field(default_factory=list)  # this pass's values with the prefix (when collecting)

    def matches(self, k: Keys) -> Any:
        return np.ones(len(k), dtype=bool) if self.shift == 64 else (k >> np.uint64(self.shift)) == self.prefix

    @property
    def collecting(self) -> bool:
        return 0 <= self.count <= COLLECT


def select(ranks: Iterable[int], passes: Callable[[], Iterable[Floats]]) -> dict[int, float]:
    """The values at ``ranks`` of the ascending order of every value ``passes()`` yields
    (called once per pass; each call must yield the same values, NaN-free)."""
    todo = {r: _Rank(r) for r in ranks}
    found: dict[int, float] = {}
    while todo:
        for chunk in passes():
            k = keys(chunk)
            for r in todo.values():
                _feed(r, k, chunk)
        for r in list(todo.values()):
            done = _settle(r)
            if done is not None:
                found[r.rank] = done
                del todo[r.rank]
    return found


def _feed(r: _Rank, k: Keys, chunk: Floats) -> None:
    mine = r.matches(k)
    if r.collecting:
        r.kept.append(chunk[mine])
        return
    digits = (k[mine] >> np.uint64(r.shift - _STEP)) & np.uint64(_BINS - 1)
    counts = np.bincount(digits.astype(np.int64), minlength=_BINS)
    r.hist = counts if r.hist is None else r.hist + counts


def _settle(r: _Rank) -> float | None:
    """After a pass: the value, or None with ``r`` narrowed for the next pass."""
    if r.collecting:
        return float(np.sort(np.concatenate(r.kept))[r.rank - r.below])
    counts = r.hist if r.hist is not None else np.zeros(_BINS, dtype=np.int64)
    r.hist = None
    ends = np.cumsum(counts)
    digit = int(np.searchsorted(ends, r.rank - r.below, side="right"))
    r.below += int(ends[digit - 1]) if digit else 0
    r.count = int(counts[digit])
    r.prefix = (r.prefix << _STEP) | digit
    r.shift -= _STEP
    if r.shift == 0:  # every bit known: all values at this key are the one value
        return value_of(r.prefix)
    return None


def percentiles(qs: Iterable[float], n: int, passes: Callable[[], Iterable[Floats]]) -> list[float]:
    """Percentiles ``qs`` (0..1) of ``n`` values as ``numpy.percentile`` (linear) computes them."""
    qs = list(qs)
    spots = [(n - 1) * q for q in qs]
    lows = [int(np.floor(s)) for s in spots]
    at = select(sorted({x for lo in lows for x in (lo, min(lo + 1, n - 1))}), passes)
    out = []
    for s, lo in zip(spots, lows, strict=True):
        a, b, t = at[lo], at[min(lo + 1, n - 1)], s - lo
        # numpy's _lerp: from the nearer end, so the result is monotonic in t
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
    return out
