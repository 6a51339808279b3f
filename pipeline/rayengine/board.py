"""The job's board: one small Ray actor every sender actor and the driver share.

It holds the first stop reason (a bad key, an empty quota or a model's breaker giving up,
met by one actor, stops them all), the models an actor found unserved (no channel: the
other actors send those rows to their next model without asking it first), which actor
processes joined with which share (``_run.json`` reports it; the crash test kills one by
its pid) and each actor's figures for ``_run.json`` (per model, ``--embed``). Nothing on
a row's path calls it: actors poll it (:data:`~pipeline.rayengine.udf.BOARD_POLL_S`).
"""

from __future__ import annotations

from typing import Any

import ray


class Board:
    """The stop reason and the actors seen; see the module docstring."""

    def __init__(self) -> None:
        self._reason: str | None = None
        self._actors: dict[int, dict[str, Any]] = {}
        self._unserved: dict[str, str] = {}
        self._figures: dict[int, dict[str, Any]] = {}

    def stop(self, reason: str) -> None:
        if self._reason is None:
            self._reason = reason

    def reason(self) -> str | None:
        return self._reason

    def news(self, pid: int, unserved: dict[str, str],
             figures: dict[str, Any] | None) -> tuple[str | None, dict[str, str]]:  # fmt: skip
        """An actor's poll: what it learnt in (unserved models, its figures when they changed),
        the stop reason and every unserved model out."""
        for model, why in unserved.items():
            self._unserved.setdefault(model, why)
        if figures is not None:
            self._figures[pid] = figures
        return self._reason, dict(self._unserved)

    def figures(self) -> list[dict[str, Any]]:
        return list(self._figures.values())

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
