"""IdIndex: membership and first positions of request_ids, by 64-bit hash."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.idset import IdIndex, hash_ids


def test_hash_ids_agrees_for_python_lists_and_arrow_arrays() -> None:
    ids = ["a", "b", "c", "a"]
    expected = hash_ids(ids)
    assert expected.dtype == np.int64 and len(expected) == 4
    assert np.array_equal(hash_ids(pa.array(ids)), expected)
    assert np.array_equal(hash_ids(pa.chunked_array([["a", "b"], ["c", "a"]])), expected)
    assert expected[0] == expected[3] and len(set(expected[:3].tolist())) == 3


def test_positions_are_the_given_order_or_minus_one() -> None:
    index = IdIndex(hash_ids(["x", "y", "z"]))
    assert index.positions(hash_ids(["z", "nope", "x", "y"])).tolist() == [2, -1, 0, 1]
    assert index.contains(hash_ids(["y", "nope"])).tolist() == [True, False]
    assert len(index) == 3 and not index.has_duplicates


def test_a_repeated_id_is_a_duplicate_and_resolves_to_its_first_position() -> None:
    index = IdIndex(hash_ids(["x", "y", "x", "y", "x"]))
    assert index.has_duplicates
    assert index.positions(hash_ids(["x", "y"])).tolist() == [0, 1]


def test_empty_index_contains_nothing() -> None:
    index = IdIndex.of([])
    assert len(index) == 0 and not index.has_duplicates
    assert index.positions(hash_ids(["a", "b"])).tolist() == [-1, -1]
    assert index.positions(hash_ids([])).tolist() == []


def test_of_joins_chunks_in_order() -> None:
    index = IdIndex.of([hash_ids(["a", "b"]), hash_ids([]), hash_ids(["c"])])
    assert index.positions(hash_ids(["c", "a", "b"])).tolist() == [2, 0, 1]


def test_ids_beyond_the_largest_and_below_the_smallest_hash_are_absent() -> None:
    hashes = np.array([10, 20, 30], dtype=np.int64)
    index = IdIndex(hashes)
    probe = np.array([5, 10, 15, 30, 35, np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)
    assert index.positions(probe).tolist() == [-1, 0, -1, 2, -1, -1, -1]


def test_a_million_ids_cost_an_int64_and_an_int32_array_not_python_objects() -> None:
    hashes = np.arange(1_000_000, dtype=np.int64)[::-1].copy()
    index = IdIndex(hashes)
    assert index.sorted.nbytes + index.order.nbytes == 12_000_000  # 8-byte hashes, 4-byte positions
    found = index.positions(np.array([999_999, 0, -5], dtype=np.int64))
    assert found.tolist() == [0, 999_999, -1] and found.dtype == np.int64
