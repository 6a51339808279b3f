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

Before the rows become a Dataset the driver does what the asyncio engine's gate
(:mod:`pipeline.incremental`) does as rows stream: a request repeated in the
manifest is kept back and rides on its twin's outcome (:mod:`pipeline.dedupe`), and
with ``--reuse`` the documents of the rows with an earlier answer are HEADed (one
per URL) and the unchanged ones copied forward (:func:`~pipeline.incremental.reuse_known_rows`):
only the rows to ask reach the actors, which HEAD the others' documents themselves.

Durability: an outcome is journaled when its batch reaches the driver. A killed
actor's batches never reached it: Ray restarts the actor and runs its task again,
so those rows are sent again (paid twice), and nothing is written twice: the
journal keeps the latest outcome per request_id and compaction writes one row each.
A killed driver loses the batches in flight; the rerun sends them.

Stops: a bad key, an empty quota or a model's breaker giving up, met by any actor,
reaches every actor through the :class:`~pipeline.rayengine.board.Board` and the
driver (exit 3, resumable); Ctrl-C,
``--deadline`` and ``--max-runtime`` go the other way. After a stop the driver keeps
collecting answers for up to ``grace_period`` seconds, then leaves the rest pending.
"""

from __future__ import annotations

import asyncio
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
from ..dedupe import Dedupe
from ..docmeta import DocMeta
from ..errors import UsageError
from ..idset import IdIndex
from ..incremental import doc_heads, reuse_index, reuse_known_rows, with_meta
from ..journal import JournalWriter
from ..manifest import Manifest, manifest_models
from ..models import merge_info
from ..pool import invalid_outcome
from ..records import Outcome, Row, RunSummary, Status
from ..report import ProgressDisplay
from ..reuse import ReuseIndex
from ..runner import Run, _prior, _prior_counts, _run_loop, time_limit
from ..schema import JOURNAL_ONLY
from .board import new_board
from .dataset import block_rows, blocks, send, with_actors
from .shares import split
from .udf import CONTENT, FORM, HEADED, MODEL, REUSE_KEY, ROW_INDEX

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
        self._headed: dict[str, DocMeta | None] = {}  # rows asked whose document the driver HEADed (--reuse)
        self._doc_meta: dict[str, int] = {}  # the driver's HEAD counts
        self._dedupe = Dedupe()
        self._figures: list[dict[str, Any]] = []  # each actor's per-model and --embed figures (the board's)

    async def _execute(self, manifest: Manifest) -> RunSummary:
        cfg = self.cfg
        self._time_limit = time_limit(cfg)
        self.models.join(manifest_models(manifest))  # a model column's models: the actors' routers get them
        prior, reused, skip_prior = _prior(self.run_dir, manifest, cfg, self.asker)
        skip = self.run_dir.skip_index(cfg.retry_failed, skip_prior)
        self.record.begin(manifest.num_rows if cfg.limit is None else min(cfg.limit, manifest.num_rows),
                          _prior_counts(prior, cfg.retry_failed))  # fmt: skip
        del prior, skip_prior
        index = await asyncio.to_thread(reuse_index, cfg) if cfg.reuse else None  # earlier answers (--reuse)
        # the asyncio engine's rule: repeats (this driver sends one of them) and reuse candidates left out
        estimate = estimate_rows(manifest, skip, cfg, index) if BudgetGuard(cfg).active else None
        if estimate is not None and (why := check_before_start(estimate, cfg)):
            raise UsageError(f"{why}; nothing was sent")
        self.journal = JournalWriter(self.run_dir, self.record.run_id, cfg.model)
        self.journal.on_error = lambda e: self._errors.append(str(e))
        self._write_info(self.record.running())
        for outcome in reused:
            self._record(outcome)
        tables = await self._tables(manifest, skip, index if index is not None and len(index) else None)
        del index
        # blocking on purpose: nothing else runs on this loop, and Ctrl-C lands in the driver loop
        reason = self._send_all(tables)
        self._count_heads()
        if reason or self._errors:
            self.stop.request(reason or self._errors[0])
        return await self._finish(manifest)

    def _send_all(self, tables: list[pa.Table]) -> str | None:
        """Send every row left through the actors; the stop reason, if the job stopped."""
        t0 = time.monotonic()
        with _ray_session(self.cfg) as started:
            self.engine["ray_init_s"] = round(time.monotonic() - t0, 3)
            self.engine["ray_started_here"] = started
            cfg = with_actors(self.cfg)  # how many actors, once the cluster is known
            self.engine["actors"] = split(cfg).actors
            if not tables:
                return None
            board = new_board(f"docpipe-board-{self.record.run_id}")  # named: ray.util.list_named_actors finds it
            ds = _dataset(blocks(tables, block_rows(cfg)))
            del tables
            models = tuple(sorted(self.models.run_models))
            outcomes = send(ds, cfg, self.record.run_id, board, raise_on_stop=False, models=models)
            try:
                return self._drain(outcomes, board, t0)
            finally:
                with contextlib.suppress(Exception):
                    self.engine["actor_processes"] = ray.get(board.actors.remote(), timeout=5)
                    self._figures = ray.get(board.figures.remote(), timeout=5)
                ray.kill(board)

    async def _tables(self, manifest: Manifest, skip: IdIndex, index: ReuseIndex | None) -> list[pa.Table]:
        """The rows to send as Arrow tables. Rows that cannot be sent are journaled here, and
        with ``--reuse`` so are the answers copied forward: the driver HEADs the candidates'
        documents first (pipeline/incremental.py), so only rows to ask become the Dataset."""
        tables = []
        async with doc_heads(self.cfg) if index is not None else contextlib.nullcontext(None) as heads:
            for rows in manifest.rows(skip):
                keep = []
                # a repeated request is sent once; its rows ride on its outcome (pipeline/dedupe.py)
                for row, repeat in zip(rows, self._dedupe.repeats_in(rows).tolist(), strict=True):
                    if repeat:
                        if (status := self._dedupe.repeat(row)) is not None:
                            self.record.add_repeats(status, 1)
                    elif row.invalid is not None:
                        self._settle(invalid_outcome(row))
                    else:
                        keep.append(row)
                if index is not None and heads is not None and keep:
                    reused, keep, found = await reuse_known_rows(keep, index, heads)
                    for outcome in reused:
                        self._settle(outcome)
                    self._headed.update(found)
                if keep:
                    tables.append(_table(keep, self._headed))
            self._doc_meta = dict(heads.counts) if heads is not None else {}
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
                    if outcome.request_id in self._headed:  # the driver HEADed its document (--reuse)
                        meta = self._headed.pop(outcome.request_id)
                        outcome = outcome if meta is None else with_meta(outcome, meta)
                    self._settle(outcome)
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

    def _settle(self, outcome: Outcome) -> None:
        """Journal and count an outcome, and the repeated rows that waited for it."""
        self._record(outcome)
        if waiting := self._dedupe.settled(outcome):
            self.record.add_repeats(outcome.status, waiting)

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
        """The Ray engine's figures (actors, Ray's start-up), and the actors' per-model and
        ``--embed`` figures added up (the driver's own router and fetcher send nothing)."""
        figures = self._figures
        info: dict[str, Any] = {"engine": dict(self.engine)}
        info.update(merge_info(figures, self.cfg.fallback_models))
        if not info["models"]:  # no actor reported (nothing sent): the run's model, as the asyncio engine shows it
            info["models"][self.cfg.model] = {"answered": 0, "unserved": None, "breaker_opened": 0}
        if self.cfg.embed:
            info.update({k: sum(f.get(k, 0) for f in figures) for k in ("embedded_documents", "embedded_bytes")})
        return info

    def _count_heads(self) -> None:
        """The run's document HEADs (``_run.json``): the driver's (``--reuse``) and the actors'."""
        if self.cfg.doc_meta:
            heads = [self._doc_meta, *(f.get("doc_meta") or {} for f in self._figures)]
            names = ("heads", "ranged_gets", "failed", "skipped")
            self.record.doc_meta = {k: sum(h.get(k, 0) for h in heads) for k in names}


def _table(rows: list[Row], headed: dict[str, DocMeta | None]) -> pa.Table:
    """Rows as the actors read them (:func:`pipeline.rayengine.udf._rows`)."""
    table = pa.table({
        ROW_INDEX: pa.array([r.index for r in rows], pa.int64()),
        "request_id": [r.request_id for r in rows], "file_url": [r.file_url for r in rows],
        "question": [r.question for r in rows], CONTENT: [r.content for r in rows],
        REUSE_KEY: pa.array([r.reuse_key for r in rows], pa.int64()),
        MODEL: pa.array([r.model for r in rows], pa.string()),
        FORM: pa.array([r.form for r in rows], pa.string())})  # fmt: skip
    if headed:
        table = table.append_column(HEADED, pa.array([r.request_id in headed for r in rows], pa.bool_()))
    return table


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


# the actors' columns: reuse_key (journal only) rides in its own column
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


def _dataset(tables: list[pa.Table]) -> ray.data.Dataset:
    """The rows as a dataset of exactly these blocks. ``from_blocks`` reads each block's
    metadata here; ``from_arrow`` sends a remote task per block for it and waits for
    them all, before a single sender actor is asked for: on a busy two-core machine
    those tasks (a worker each that imports Ray Data) held the first request back by
    5 to 13 s. ``from_arrow`` only where ``from_blocks`` (a developer API) is missing."""
    from_blocks = getattr(ray.data, "from_blocks", None)
    if from_blocks is None:  # pragma: no cover - older Ray
        return ray.data.from_arrow(cast(list[Any], tables))
    return cast(ray.data.Dataset, from_blocks(tables))


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
