"""The job's board: one small Ray actor every sender actor and the driver share.

It holds the first stop reason (a bad key met by one actor stops them all) and which
actor processes joined with which share (``_run.json`` reports it; the crash test
kills one by its pid). Nothing on a row's path calls it: actors poll it
(:data:`~pipeline.rayengine.udf.BOARD_POLL_S`).
"""

from __future__ import annotations

from typing import Any

import ray


class Board:
    """The stop reason and the actors seen; see the module docstring."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._actors: dict[int, dict[str, Any]] = {}

    def stop(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    def reason(self) -> str | None:
        return self._reason

    def hello(self, pid: int, concurrency: int, rpm: int | None) -> None:
        self._actors[pid] = {"pid": pid, "concurrency": concurrency, "rpm": rpm}

    def actors(self) -> list[dict[str, Any]]:
        return list(self._actors.values())


def new_board(name: str | None = None) -> Any:
    """A Board actor (no CPU reserved: on a small machine a whole CPU for it starves the senders)."""
    options: dict[str, Any] = {"num_cpus": 0}
    if name:
        options["name"] = name
    return ray.remote(Board).options(**options).remote()
