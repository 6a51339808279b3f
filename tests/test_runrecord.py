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
