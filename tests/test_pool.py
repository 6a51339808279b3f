"""The pool's seats over real HTTP: a row waiting out its Retry-After or back-off holds no worker."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline import run

from .conftest import fast_config, make_rows, write_csv


def test_a_row_waiting_for_its_retry_after_lets_the_other_rows_through(tmp_path: Path, sim) -> None:
    # one seat: before issue 10 the Retry-After row held the only worker for its 2 s
    server = sim(latency_s=0.01)
    rows = make_rows(6)
    rows[0]["question"] += " [[sim:retry_after=2]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=1, adaptive=False))

    assert (summary.exit_code, summary.ok, summary.pending) == (0, 6, 0)
    stats = server.stats()
    # the 429, the five other rows meanwhile, then the retry: none of it early
    assert stats["requests"] == 7 and stats["max_in_flight"] == 1
    assert {k: stats["retry_after"][k] for k in ("sent", "checked", "violations")} == {
        "sent": 1, "checked": 1, "violations": 0}  # fmt: skip
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    waited = table[0]
    assert waited["attempts"] == 2 and waited["status"] == "ok"
    assert all(r["attempts"] == 1 and r["completed_at"] < waited["completed_at"] for r in table[1:])


def test_resting_rows_never_raise_the_requests_in_flight_above_the_concurrency(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.02)
    rows = make_rows(40)
    for i in range(0, 40, 4):
        rows[i]["question"] += " [[sim:retry_after=0.5]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    summary = run(fast_config(manifest, tmp_path / "out", server, concurrency=3, adaptive=False))

    assert (summary.exit_code, summary.ok) == (0, 40)
    stats = server.stats()
    assert stats["requests"] == 50 and stats["max_in_flight"] <= 3 and stats["duplicate_ok"] == 0
    assert (stats["retry_after"]["checked"], stats["retry_after"]["violations"]) == (10, 0)


def test_a_row_resting_when_the_run_stops_stays_pending(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.01)
    rows = make_rows(5)
    rows[2]["question"] += " [[sim:retry_after=60]]"
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    summary = run(fast_config(manifest, out, server, concurrency=2, adaptive=False, max_runtime=1.0))

    assert (summary.ok, summary.failed, summary.pending) == (4, 0, 1)
    # the 429 and the four other rows; the resting row was not sent again before its Retry-After
    assert server.stats()["requests"] == 5 and server.stats()["retry_after"]["checked"] == 0
    resumed = run(fast_config(manifest, out, server, concurrency=2, adaptive=False))
    assert (resumed.exit_code, resumed.ok, resumed.pending) == (0, 5, 0)
    assert server.stats()["requests"] == 6
