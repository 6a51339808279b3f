"""The run record: exit codes from counts, and the timeline the report draws."""

from __future__ import annotations

import itertools

import pytest

from pipeline.errors import ExitCode
from pipeline.records import Ended
from pipeline.runrecord import Timeline, exit_for


@pytest.mark.parametrize(
    ("stopped", "failed", "pending", "want"),
    [
        (False, 0, 0, (Ended.COMPLETED, ExitCode.OK)),
        (False, 2, 0, (Ended.COMPLETED_WITH_FAILURES, ExitCode.FAILED_ROWS)),
        (False, 0, 3, (Ended.ABORTED, ExitCode.ABORTED)),
        (True, 0, 0, (Ended.ABORTED, ExitCode.ABORTED)),
        (True, 2, 3, (Ended.ABORTED, ExitCode.ABORTED)),
        (False, 2, 3, (Ended.COMPLETED_WITH_FAILURES, ExitCode.FAILED_ROWS)),
    ],
)
def test_exit_code_follows_from_the_counts(stopped: bool, failed: int, pending: int, want: tuple) -> None:
    assert exit_for(stopped, failed, pending) == want


def test_timeline_stays_bounded_and_keeps_the_first_point() -> None:
    t = Timeline(limit=10)
    for i in range(1000):
        t.add(float(i), {"requests": i})
    points = t.points()
    assert len(points) < 10 and points[0]["t"] == 0.0
    assert [p["requests"] for p in points] == sorted(p["requests"] for p in points)
    assert all(b["t"] - a["t"] == t.step for a, b in itertools.pairwise(points))


def test_results_counts_add_up_row_group_by_row_group(tmp_path) -> None:
    """results_counts reads a row group at a time (a million rows at once took 110 MB): the
    sums over groups, reused rows and errors included, equal the counts of the whole table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.runrecord import Counts, results_counts

    n = 50
    status = ["ok" if i % 5 else "failed" for i in range(n)]
    table = pa.table({
        "status": status,
        "error_type": [None if s == "ok" else ("timeout" if i % 2 else "server_error") for i, s in enumerate(status)],
        "prompt_tokens": pa.array([i for i in range(n)], pa.int64()),
        "completion_tokens": pa.array([2 * i for i in range(n)], pa.int64()),
        "total_tokens": pa.array([3 * i for i in range(n)], pa.int64()),
        "cost_usd": [0.25 * i for i in range(n)],
        "reused_from": ["night-1" if s == "ok" and i % 3 == 0 else None for i, s in enumerate(status)],
    })  # fmt: skip
    path = tmp_path / "results.parquet"
    pq.write_table(table, path, row_group_size=7)
    assert pq.ParquetFile(path).num_row_groups == 8
    got, whole = results_counts(path), Counts.of(table)
    assert got == whole
    assert (got.ok, got.failed, got.reused, got.errors_by_type) == (40, 10, 13, {"timeout": 5, "server_error": 5})
