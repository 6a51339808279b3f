"""``docpipe run --engine ray``: the driver.

The driver is the asyncio engine's :class:`~pipeline.runner.Run` with the pool
swapped out: it reads the manifest, skips what the output folder already holds, and
hands the rows left (held in Ray's object store: for very large manifests, run in
``--limit``/``--shard`` slices) to the Ray Data sender actors
(:mod:`pipeline.rayengine.dataset`); each outcome batch that comes back is journaled on
the driver's disk at once (the same journal: written at once, fsync'd every
:data:`POLL_S` while batches come in), and compaction, ``_run.json`` and the report are
the asyncio engine's. So both engines write the same table for the same
manifest, and a rerun resumes from either.

Durability: an outcome is journaled when its batch reaches the driver. A killed
actor's batches never reached it: Ray restarts the actor and runs its task again,
so those rows are sent again (paid twice), and nothing is written twice: the
journal keeps the latest outcome per request_id and compaction writes one row each.
A killed driver loses the batches in flight; the rerun sends them.

Stops: a bad key or an empty quota met by any actor reaches every actor through the
:class:`~pipeline.rayengine.board.Board` and the driver (exit 3, resumable); Ctrl-C,
``--deadline`` and ``--max-runtime`` go the other way. After a stop the driver keeps
collecting answers for up to ``grace_period`` seconds, then leaves the rest pending.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any, cast

import pyarrow as pa
import ray
import ray.data

from ..budget import BudgetGuard, check_before_start, estimate_rows
from ..config import JobConfig
from ..errors import UsageError
from ..idset import IdIndex
from ..journal import JournalWriter
from ..manifest import Manifest
from ..pool import invalid_outcome
from ..records import Outcome, RunSummary, Status
from ..report import ProgressDisplay
from ..runner import Run, _prior, _prior_counts, _run_loop, time_limit
from ..schema import JOURNAL_ONLY
from .board import new_board
from .dataset import block_rows, blocks, send
from .shares import split
from .udf import CONTENT, REUSE_KEY, ROW_INDEX

log = logging.getLogger("docpipe")

#: How often the driver reads the board and fsyncs the journal while batches come in (seconds).
POLL_S = 0.5


class RayRun(Run):
    """One run on the Ray engine; see the module docstring."""

    def __init__(self, cfg: JobConfig, *, progress: ProgressDisplay | None = None) -> None:
        super().__init__(cfg, progress=progress)
        self.engine: dict[str, Any] = {"name": "ray", "actors": split(self.cfg).actors}
        self._errors: list[str] = []
        self._next_progress = 0.0
        self._time_limit: tuple[float, str] | None = None  # (elapsed s, reason), taken when the run begins

    async def _execute(self, manifest: Manifest) -> RunSummary:
        cfg = self.cfg
        _refuse_what_ray_lacks(cfg, manifest)
        self._time_limit = time_limit(cfg)
        prior, reused, skip_prior = _prior(self.run_dir, manifest, cfg, self.asker)
        skip = self.run_dir.skip_index(cfg.retry_failed, skip_prior)
        self.record.begin(manifest.num_rows if cfg.limit is None else min(cfg.limit, manifest.num_rows),
                          _prior_counts(prior, cfg.retry_failed))  # fmt: skip
        del prior, skip_prior
        # every row is sent on Ray (no dedupe): every row counts
        estimate = estimate_rows(manifest, skip, cfg, distinct=False) if BudgetGuard(cfg).active else None
        if estimate is not None and (why := check_before_start(estimate, cfg)):
            raise UsageError(f"{why}; nothing was sent")
        self.journal = JournalWriter(self.run_dir, self.record.run_id, cfg.model)
        self.journal.on_error = lambda e: self._errors.append(str(e))
        self._write_info(self.record.running())
        for outcome in reused:
            self._record(outcome)
        # blocking on purpose: nothing else runs on this loop, and Ctrl-C lands in the driver loop
        reason = self._send_all(manifest, skip)
        if reason or self._errors:
            self.stop.request(reason or self._errors[0])
        return await self._finish(manifest)

    def _send_all(self, manifest: Manifest, skip: IdIndex) -> str | None:
        """Send every row left through the actors; the stop reason, if the job stopped."""
        t0 = time.monotonic()
        with _ray_session(self.cfg) as started:
            self.engine["ray_init_s"] = round(time.monotonic() - t0, 3)
            self.engine["ray_started_here"] = started
            tables = self._tables(manifest, skip)
            if not tables:
                return None
            board = new_board(f"docpipe-board-{self.record.run_id}")  # named: ray.util.list_named_actors finds it
            ds = ray.data.from_arrow(cast(list[Any], blocks(tables, block_rows(self.cfg))))
            del tables
            outcomes = send(ds, self.cfg, self.record.run_id, board, raise_on_stop=False)
            try:
                return self._drain(outcomes, board, t0)
            finally:
                with contextlib.suppress(Exception):
                    self.engine["actor_processes"] = ray.get(board.actors.remote(), timeout=5)
                ray.kill(board)

    def _tables(self, manifest: Manifest, skip: IdIndex) -> list[pa.Table]:
        """The rows to send as Arrow tables; rows that cannot be sent are journaled here."""
        tables = []
        for rows in manifest.rows(skip):
            keep = []
            for row in rows:
                if row.invalid is not None:
                    self._record(invalid_outcome(row))
                else:
                    keep.append(row)
            if keep:
                tables.append(pa.table({
                    ROW_INDEX: pa.array([r.index for r in keep], pa.int64()),
                    "request_id": [r.request_id for r in keep], "file_url": [r.file_url for r in keep],
                    "question": [r.question for r in keep], CONTENT: [r.content for r in keep],
                    REUSE_KEY: pa.array([r.reuse_key for r in keep], pa.int64())}))  # fmt: skip
        return tables

    def _drain(self, outcomes: ray.data.Dataset, board: Any, t0: float) -> str | None:
        """Journal every outcome batch as it comes; stop on the board's word or the driver's."""
        reason: str | None = None
        grace_until: float | None = None
        next_poll = time.monotonic() + POLL_S
        batches = outcomes.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        try:
            for batch in _interruptible(batches):
                if batch is None:  # Ctrl-C
                    if reason is not None:
                        raise KeyboardInterrupt
                    reason = "SIGINT: finishing in-flight requests"
                    board.stop.remote(reason)
                    grace_until = time.monotonic() + self.cfg.grace_period
                    continue
                if batch.num_rows and "first_outcome_s" not in self.engine:
                    self.engine["first_outcome_s"] = round(time.monotonic() - t0, 3)
                for outcome in _outcomes(batch):
                    self._record(outcome)
                    self.record.requests += outcome.attempts
                    self.record.sent_rows += 1 if outcome.attempts else 0
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + POLL_S
                    self._progress_tick()
                    if reason is None and (reason := self._stop_reason(board)):
                        grace_until = now + self.cfg.grace_period
                if grace_until is not None and now > grace_until:
                    log.warning("grace period over: the rows still in flight stay pending")
                    break
        finally:
            with contextlib.suppress(Exception):
                batches.close()  # type: ignore[attr-defined]
        return reason or self._stop_reason(board)

    def _progress_tick(self) -> None:
        """The journal's fsync, and progress every ``display.interval`` seconds."""
        assert self.journal is not None
        with contextlib.suppress(Exception):
            self.journal.flush_sync()
        now = time.monotonic()
        if self.progress is not None and now >= self._next_progress:
            self._next_progress = now + self.progress.interval
            self.progress.update(self.record.snapshot(None))

    def _stop_reason(self, board: Any) -> str | None:
        """The board's stop reason; the driver's own (deadline, max runtime, disk) goes to the board."""
        mine = self._errors[0] if self._errors else self._deadline_reason()
        if mine is not None:
            board.stop.remote(mine)
        try:
            found: str | None = ray.get(board.reason.remote(), timeout=10)
        except Exception:
            return mine
        return found or mine

    def _deadline_reason(self) -> str | None:
        limit = self._time_limit
        return limit[1] if limit is not None and self.record.elapsed() >= limit[0] else None

    def _engine_info(self) -> dict[str, Any]:
        """The Ray engine's figures (actors, Ray's start-up); the driver's own model router and
        fetcher see no request, so their (empty) figures are left out."""
        return {"engine": dict(self.engine)}


def _refuse_what_ray_lacks(cfg: JobConfig, manifest: Manifest) -> None:
    """What the actors do not do yet is refused before anything is sent, never ignored:
    a per-row model or form would otherwise be asked of the run's model in the run's form."""
    cols = manifest.columns
    lacking = [f"the manifest's per-row {what} column {name!r}" for what, name in (("model", cols.model),
               ("form", cols.form)) if name]  # fmt: skip
    lacking += [flag for flag, on in (("--embed", cfg.embed), ("--reuse", bool(cfg.reuse))) if on]
    if lacking:
        raise UsageError(f"{manifest.path}: --engine ray does not support {' or '.join(lacking)} yet; "
                         "run this job with the default engine (asyncio)")  # fmt: skip


def _interruptible(batches: Any) -> Iterator[pa.Table | None]:
    """The batches; a Ctrl-C while waiting for one yields None once instead of raising."""
    it = iter(batches)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except KeyboardInterrupt:
            yield None


def _outcomes(batch: pa.Table) -> list[Outcome]:
    """The journal records of an outcome batch (the sender's columns back into Outcomes)."""
    out = []
    # fields the UDF does not return keep the Outcome's defaults; reuse_key rides in its own column
    names = [n for n in _OUTCOME_FIELDS if n != "reuse_key" and n in batch.column_names]
    for r in batch.select([ROW_INDEX, REUSE_KEY, "request_id", *names]).to_pylist():
        index = r.pop(ROW_INDEX)
        r["row_index"] = -1 if index is None else index
        r["reuse_key"] = r.pop(REUSE_KEY)
        out.append(_outcome(r))
    return out


# the actors' columns: reuse_key (journal only) is left out; the Ray engine does not take part in --reuse
_OUTCOME_FIELDS = [f.name for f in dataclasses.fields(Outcome) if f.name not in ("request_id", *JOURNAL_ONLY)]


def _outcome(r: dict[str, Any]) -> Outcome:
    values = {n: r[n] for n in _OUTCOME_FIELDS if n in r}
    if values.get("models_tried") is not None:
        values["models_tried"] = tuple(values["models_tried"])
    values["status"] = Status(values["status"])
    for name in ("started_at", "completed_at", "doc_last_modified"):  # Outcome keeps epoch seconds
        values[name] = None if values[name] is None else values[name].timestamp()
    # reuse_key rides in its own column: kept in the journal, so a later asyncio night can --reuse these answers
    return Outcome(request_id=r["request_id"], row_index=r["row_index"], reuse_key=r.get("reuse_key"), **values)


@contextlib.contextmanager
def _ray_session(cfg: JobConfig) -> Iterator[bool]:
    """Ray as the job needs it: the running one, ``ray_address``, or a local one started
    (and shut down) here. Ray Data's progress bars are off while the job runs."""
    started = False
    if not ray.is_initialized():
        ray.init(address=cfg.ray_address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, namespace=f"docpipe-{secrets.token_hex(4)}")  # fmt: skip
        started = True
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield started
    finally:
        ctx.enable_progress_bars = bars
        if started:
            ray.shutdown()


def run_ray(cfg: JobConfig, *, display: ProgressDisplay | None = None) -> RunSummary:
    """Run a job on the Ray engine to its end; returns its summary (see :func:`pipeline.runner.run`)."""
    return _run_loop(RayRun(cfg, progress=display).execute())
