"""A run of one job: the library entry points and the run's lifecycle.

``run(cfg)`` is the library entry point (a notebook, an orchestrator task);
``docpipe run`` is this call plus option parsing and exit codes. A run:

1. checks the manifest and the output folder (takes its lock), reads what the
   folder already holds, and refuses a budget it would certainly overrun;
2. runs the :class:`~pipeline.pool.Pool` of workers, each sending rows through the
   :class:`~pipeline.sender.RowSender`, while background tasks fsync the journal
   every second, show progress and watch the deadline;
3. rebuilds ``results.parquet`` from the journal (compaction) and writes
   ``_run.json``, whose ``exit_code`` is always the process's.

Every stop (signal, deadline, budget, breaker, run-fatal answer, disk trouble)
goes through one :class:`~pipeline.control.StopControl`; rows never answered stay
*pending* (not failed) so that the next run sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .arrowutil import string_scalar
from .budget import BudgetGuard, check_before_start, estimate_rows
from .config import JobConfig, seconds_until
from .control import StopControl
from .embed import DocumentFetcher
from .errors import DocpipeError, ExitCode, StorageError, UsageError
from .idset import IdIndex
from .incremental import Gate, doc_heads, reuse_index
from .journal import JournalWriter
from .limits import Breaker, Pacer
from .manifest import Manifest, manifest_models
from .memory import trim_heap
from .models import ModelRouter
from .pool import Pool
from .presign import PresigningClient  # s3:// documents presigned per attempt; others untouched
from .records import Outcome, RunSummary
from .report import ProgressDisplay
from .rundir import RunDir
from .runrecord import Counts, RunRecord, results_counts
from .schema import pandas_version
from .sender import RowSender
from .storage import REPORT_FILE, atomic_write_bytes
from .structured.ask import Asker, asker_for

if TYPE_CHECKING:
    from .compaction import Compactor
    from .digest import SummaryReport
    from .structured.spec import Spec

log = logging.getLogger("docpipe")
COMPACTED_MARK = ".compacted.json"


def pacer_for(cfg: JobConfig) -> Pacer:
    """The pacer of a run's limits (the Ray engine's actors each build theirs on their share)."""
    return Pacer(
        concurrency=cfg.concurrency,
        adaptive=cfg.adaptive,
        rpm=cfg.rpm,
        tpm=cfg.tpm,
        backoff_initial=cfg.backoff_initial,
        backoff_max=cfg.backoff_max,
        breaker=Breaker(cfg.breaker_threshold, cfg.breaker_probes, cfg.breaker_pause),
    )


class Run:
    """One run of one job. Use :func:`run` or :func:`run_async` rather than this directly."""

    def __init__(self, cfg: JobConfig, *, progress: ProgressDisplay | None = None,
                 install_signals: bool = False) -> None:  # fmt: skip
        cfg = cfg.for_run()  # the same checks whichever door the settings came in by
        assert cfg.manifest is not None and cfg.out is not None
        self.cfg = cfg
        self.progress = progress
        self.install_signals = install_signals
        self.stop = StopControl()
        self.record = RunRecord(cfg)
        self.run_dir = RunDir(cfg.out)
        self.pacer = pacer_for(cfg)
        self.journal: JournalWriter | None = None  # opened once the folder's lock is held
        self.asker = asker_for(cfg)  # structured answers: the schema's columns, checks and the run's mode
        self.spec = self.asker.spec if self.asker is not None else None
        self.models, self.fetcher = ModelRouter(cfg, self.pacer.breaker), DocumentFetcher(cfg)  # models, --embed
        self._signals = 0
        self._keep_report = False
        self._early = EarlyCompaction()  # compaction's journal pass, begun beside the last requests

    # -- the run -----------------------------------------------------------------

    async def execute(self) -> RunSummary:
        """Run the job to its end (or its stop) and return the summary ``_run.json`` holds."""
        assert self.cfg.manifest is not None
        manifest = Manifest(self.cfg.manifest, self.cfg)
        self.run_dir.prepare()
        try:
            return await self._execute(manifest)
        except BaseException as e:
            self._record_crash(e)
            raise
        finally:
            if self.journal is not None:
                self.journal.close()
            await self._early.drop()  # a run that ended before compacting: its spill files go
            self.run_dir.release()

    async def _execute(self, manifest: Manifest) -> RunSummary:
        cfg = self.cfg
        self.models.join(await asyncio.to_thread(manifest_models, manifest))  # a model column's models
        done = await asyncio.to_thread(answered_already, self.run_dir, cfg, manifest) if self.asker is None else None
        self._keep_report = done is not None  # the folder's rows and answers are those its report shows
        # nothing to send (done): no walk over the manifest, no read of the journal
        prior_counts, reused, skip = (done, [], None) if done else _prior_state(self.run_dir, manifest, cfg, self.asker)
        self.record.begin(_in_scope(manifest, cfg), prior_counts)
        index = await asyncio.to_thread(reuse_index, cfg) if cfg.reuse and done is None else None  # --reuse
        budget = BudgetGuard(cfg)
        if budget.active and done is None:  # the rows certainly sent: repeats and reuse candidates left out
            why = check_before_start(await asyncio.to_thread(estimate_rows, manifest, skip, cfg, index), cfg)
            if why:
                raise UsageError(f"{why}; nothing was sent")
        self.journal = journal = JournalWriter(self.run_dir, self.record.run_id, cfg.model)
        self.journal.on_error = lambda e: self.stop.request(str(e))
        self._write_info(self.record.running())
        for outcome in reused:  # stored answers that fit a changed schema: no request
            self._record(outcome)
        with self._signal_handlers():
            async with PresigningClient(cfg) as client, doc_heads(cfg) as heads, self.fetcher, self._background():
                sender = RowSender(cfg, client, self.pacer, budget, self.stop, self.record, self.asker,
                                   models=self.models, fetcher=self.fetcher)  # fmt: skip
                gate = Gate(record=self._record, amend=self._amend, repeats=self.record.add_repeats,
                            stop=self.stop, heads=heads, index=index)  # fmt: skip
                # the first requests wait for the first cfg.concurrency rows only; nothing to send: no rows
                rows = manifest.rows(skip, first=cfg.concurrency) if done is None else ()
                begin = functools.partial(self._early.begin, self.run_dir, manifest, journal, self.spec)
                pool = Pool(rows, send=sender.send, record=self._record, stop=self.stop, concurrency=cfg.concurrency,
                            grace_period=cfg.grace_period, gate=gate, dispatched=begin)  # fmt: skip
                sender.rest = pool.rest  # a row waiting out a back-off gives its seat to the next row
                producer_error = await pool.run()
                self.record.mark("requests_done_s")
                await gate.close()
                self.record.doc_meta = dict(heads.counts) if heads is not None else None
        del pool, gate, index, rows  # the reuse index (~50 bytes an earlier answer) must not sit under compaction
        summary = await self._finish(manifest)
        if producer_error is not None:  # everything answered is kept; now say what broke
            raise producer_error
        return summary

    def _record(self, outcome: Outcome) -> None:
        if self._amend(outcome):
            self.record.add(outcome)

    def _amend(self, outcome: Outcome) -> bool:
        """Journal an outcome (alone: a second record of one already counted, whose document
        metadata came later); False when the journal could not take it and the run is stopping."""
        assert self.journal is not None
        try:
            self.journal.add(outcome)
        except StorageError as e:
            self.stop.request(str(e))
            return False
        return True

    async def _finish(self, manifest: Manifest) -> RunSummary:
        """Make the journal durable, rebuild results.parquet, write _run.json."""
        assert self.journal is not None
        journal_ok = True
        try:
            await self.journal.flush()
        except StorageError as e:
            journal_ok = False
            self.stop.request(str(e))
        finally:
            self.journal.close()
        results = await self._compact(manifest) if journal_ok else None
        self.record.sample(self.pacer.slots)
        summary = self._final_summary(results)
        if self.progress is not None:
            self.progress.close(self.record.snapshot(self.pacer.slots))
        self.record.mark("finished_s")
        self._write_info(summary)
        if not (self._keep_report and (self.run_dir.path / REPORT_FILE).exists()):
            summary = replace(summary, digest=_write_report(self.run_dir))
        return summary

    async def _compact(self, manifest: Manifest) -> str | None:
        """Rebuild results.parquet unless it is current; its path, or None when it could not be written."""
        results = str(self.run_dir.results)
        written = self.journal.written if self.journal is not None else 0
        if not written and results_current(self.run_dir, self.cfg, manifest):
            return results
        try:
            t0 = time.monotonic()
            from .compaction import compact  # at the end only: import time counts before the first request

            compactor = await self._early.take()
            trim_heap()  # the pool's buffers are garbage now; compaction's peak should not stack on them
            if compactor is not None:
                with compactor:
                    await asyncio.to_thread(compactor.finish)
            else:
                await asyncio.to_thread(compact, self.run_dir, manifest, spec=self.spec)
            trim_heap()  # compaction's buffers, freed in its thread's heap: the report's peak stacks on them
            self.record.timings["compaction_s"] = round(time.monotonic() - t0, 4)
            mark_results_current(self.run_dir, self.cfg, manifest)
        except OSError as e:
            self.stop.request(f"{results}: cannot write results: {e.strerror or e}; the answers are safe in the "
                              "journal, run the same command again to rebuild them")  # fmt: skip
            return None
        return results

    def _final_summary(self, results: str | None) -> RunSummary:
        """Counted from what is on disk: results.parquet, or the journal when it could not be written."""
        journal = self.journal.written if self.journal else 0
        if results is not None:
            counts = results_counts(results)
        else:
            try:
                counts = Counts.of(self.run_dir.latest(["request_id", "status", "error_type", "prompt_tokens",
                                                        "completion_tokens", "total_tokens", "cost_usd"]))  # fmt: skip
                journal = counts.ok + counts.failed
            except (DocpipeError, OSError):
                counts = self.record.this_run.on_top_of(self.record.prior)
        return self.record.final(counts, stopped=self.stop.is_set, reason=self.stop.reason, slots=self.pacer.slots,
                                 results_file=results, journal=journal)  # fmt: skip

    def _record_crash(self, e: BaseException) -> None:
        """An error ended the run: say so in _run.json, with the exit code the process will have."""
        if self.journal is None:  # nothing was started: _run.json (if any) is the last run's
            return
        reason = self.stop.reason or f"{type(e).__name__}: {e}"
        with contextlib.suppress(Exception):
            self.journal.flush_sync()
            self._write_info(self.record.crashed(reason, _crash_code(e), self.pacer.slots))

    def _write_info(self, summary: RunSummary) -> None:
        try:
            info = self.record.info(summary)
            if self.asker is not None:
                info.update(self.asker.mode.info())
            info.update(self._engine_info())
            self.run_dir.write_run_info(info)
        except OSError as e:
            log.error("cannot write %s: %s", self.run_dir.run_file, e)

    def _engine_info(self) -> dict[str, Any]:
        """What this engine adds to ``_run.json``: per-model figures and ``--embed``'s."""
        return {**self.models.info(), **self.fetcher.info()}

    # -- signals and background tasks ----------------------------------------------

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if not self.install_signals:
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig.name)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            self.stop.request(f"{signame}: finishing in-flight requests (grace {self.cfg.grace_period:g} s)")
            return
        # second signal: leave at once; the journal drops a torn last line, so it stays consistent
        log.error("second %s: exiting now", signame)
        try:
            if self.journal is not None:
                self.journal.flush_sync()
            self._write_info(self.record.crashed(f"{signame} twice: exited at once", ExitCode.ABORTED,
                                                 self.pacer.slots))  # fmt: skip
        finally:
            os._exit(ExitCode.ABORTED)

    @contextlib.asynccontextmanager
    async def _background(self) -> AsyncIterator[None]:
        """The journal's fsync every flush_interval, progress ticks and the deadline."""
        cfg = self.cfg
        coros: list[Coroutine[Any, Any, None]] = [self._flush_every(cfg.flush_interval), self._sample_every(1.0),
                                                  _import_finish(self.record)]  # fmt: skip
        if self.progress is not None:
            coros.append(self._tick(self.progress))
        if cfg.deadline or cfg.max_runtime:
            coros.append(_deadline(cfg, self.stop))
        tasks = [asyncio.create_task(c) for c in coros]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _flush_every(self, interval: float) -> None:
        assert self.journal is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await self.journal.flush()
            except StorageError as e:
                self.stop.request(str(e))
                return

    async def _sample_every(self, interval: float) -> None:
        while True:
            self.record.sample(self.pacer.slots)
            await asyncio.sleep(interval)

    async def _tick(self, display: ProgressDisplay) -> None:
        while True:
            await asyncio.sleep(display.interval)
            display.update(self.record.snapshot(self.pacer.slots))


def time_limit(cfg: JobConfig) -> tuple[float, str] | None:
    """Seconds from now at which ``--deadline`` or ``--max-runtime`` ends the run, whichever
    comes first, and the stop's reason; None without either. Taken once, at the run's start
    (``seconds_until`` is always ahead: asked again later it would name tomorrow)."""
    limits = []
    if cfg.max_runtime:
        limits.append((cfg.max_runtime, f"max runtime {cfg.max_runtime:g} s reached"))
    if cfg.deadline:
        limits.append((seconds_until(cfg.deadline, datetime.now()), f"deadline {cfg.deadline} reached"))
    return min(limits) if limits else None


async def _deadline(cfg: JobConfig, stop: StopControl) -> None:
    """Stop the run at its :func:`time_limit`."""
    limit = time_limit(cfg)
    if limit is not None:
        await asyncio.sleep(max(0.0, limit[0]))
        stop.request(limit[1])


#: Manifests up to this many rows begin compaction early. Beyond, the pass overlaps only a
#: small part of the run's end (8.6 s of journal pass at 1 000 000 rows against a tail of a
#: few hundred ms), while its index (24 bytes a row) and buffers stack on the pool's last
#: memory instead of following its release: 224 -> 230 MB peak at 1 000 000 rows.
EARLY_COMPACTION_ROWS = 200_000


class EarlyCompaction:
    """Compaction's journal pass, begun once every row is dispatched: the manifest's id
    hashes are complete then, so the pass runs in a thread on the whole lines the journal
    holds while the last requests are in flight (issue 10: it was most of the 0.15-0.18 s
    a 10 000-row run spent between its last answer and its exit); the run's end takes
    the :class:`~pipeline.compaction.Compactor` and finishes it."""

    def __init__(self) -> None:
        self._task: asyncio.Task[Compactor] | None = None

    def begin(self, run_dir: RunDir, manifest: Manifest, journal: JournalWriter, spec: Spec | None) -> None:
        hashes = manifest.id_hashes
        if self._task is not None or hashes is None or len(hashes) > EARLY_COMPACTION_ROWS:
            return
        log_file, position = journal.path, journal.position

        def spill() -> Compactor:
            from .compaction import Compactor

            compactor = Compactor(run_dir, manifest, spec=spec)
            try:
                compactor.spill(log_file, position)
            except BaseException:
                compactor.close()
                raise
            return compactor

        self._task = asyncio.create_task(asyncio.to_thread(spill))

    async def take(self) -> Compactor | None:
        """The compaction begun, its journal pass done; None if none was begun or it failed
        (the plain compaction then does it all, and meets the error again if it lasts)."""
        task, self._task = self._task, None
        if task is None:
            return None
        try:
            return await task
        except Exception as e:
            log.debug("compaction begun early failed (%s); compacting at the end instead", e)
            return None

    async def drop(self) -> None:
        """Remove what a compaction begun and never finished left."""
        compactor = await self.take()
        if compactor is not None:
            compactor.close()


#: What the end of a run imports (compaction with pyarrow.compute: 0.1-0.3 s; the HTML report:
#: 0.1-0.3 s more; pyarrow.json, which reads the journal back), imported early by :func:`_import_finish`.
FINISH_MODULES = ("pipeline.compaction", "pipeline.htmlreport", "pyarrow.json")


async def _import_finish(record: RunRecord, delay: float = 1.0) -> None:
    """Import :data:`FINISH_MODULES` in a thread ``delay`` seconds after the first request
    (never before it, however slow the start), so the end of the run does not wait for them
    (issue 10). A run that sends nothing imports them when it gets there."""
    while not record.requests:
        await asyncio.sleep(0.1)
    await asyncio.sleep(delay)
    for name in FINISH_MODULES:
        await asyncio.to_thread(importlib.import_module, name)
    # the installed pandas' version, which results.parquet's metadata names: importlib.metadata
    # and a walk over site-packages (10-20 ms) that compaction would otherwise wait for
    await asyncio.to_thread(pandas_version)


def _crash_code(e: BaseException) -> ExitCode:
    """The exit code the process will have for an error that ended the run."""
    if isinstance(e, UsageError):
        return ExitCode.USAGE
    if isinstance(e, DocpipeError | asyncio.CancelledError | KeyboardInterrupt):
        return ExitCode.ABORTED
    return ExitCode.INTERNAL


def _write_report(run_dir: RunDir) -> SummaryReport | None:
    """OUT/_report.html after every run that got this far (also an aborted one; not a run that
    found every row answered already and sent nothing: the report of the run that answered
    them stays, with its timeline, and a million-row resume does not spend 2-4 s redrawing it), whatever
    its size: the report reads the folder in batches into fixed-size aggregates (about
    10 MB more at 1 000 000 rows than at 10 000). A convenience, so a failure to draw it
    never changes the run's outcome. Returns ``docpipe summary``'s figures of the folder, which
    the report computed on the way (None when it failed)."""
    try:
        from .htmlreport import write_report_data

        return write_report_data(run_dir.path).summary
    except Exception as e:
        log.warning("could not write %s/_report.html: %s", run_dir.path, e)
        log.debug("report failure", exc_info=True)
        return None


def _fingerprint(run_dir: RunDir, cfg: JobConfig, manifest: Manifest) -> dict[str, Any]:
    """What results.parquet is built from: the journal's files, the manifest file, the scope."""
    st = os.stat(manifest.path)
    return {"journal": [p.name for p in run_dir.parts()],
            "manifest": [os.path.abspath(manifest.path), st.st_size, st.st_mtime_ns],
            "scope": [cfg.limit, cfg.shard, cfg.model, cfg.system, dict(cfg.params), cfg.template,
                      cfg.id_column, cfg.file_url_column, cfg.question_column, cfg.schema]}  # fmt: skip


def results_current(run_dir: RunDir, cfg: JobConfig, manifest: Manifest) -> bool:
    """True when results.parquet already reflects this manifest, scope and journal: a
    resume that journaled nothing skips compaction."""
    if not run_dir.results.exists():
        return False
    try:
        mark = json.loads((run_dir.journal / COMPACTED_MARK).read_text())
    except (OSError, ValueError):
        return False
    return bool(mark == json.loads(json.dumps(_fingerprint(run_dir, cfg, manifest))))


def mark_results_current(run_dir: RunDir, cfg: JobConfig, manifest: Manifest) -> None:
    atomic_write_bytes(run_dir.journal / COMPACTED_MARK, json.dumps(_fingerprint(run_dir, cfg, manifest)).encode())


def _in_scope(manifest: Manifest, cfg: JobConfig) -> int:
    return manifest.num_rows if cfg.limit is None else min(cfg.limit, manifest.num_rows)


def answered_already(run_dir: RunDir, cfg: JobConfig, manifest: Manifest) -> Counts | None:
    """The counts of results.parquet when it already holds an outcome for every row in
    scope and is current (this manifest, scope and journal: :func:`results_current`), so
    the run has nothing to send; None when that cannot be told without walking the
    manifest (a --shard scope, rows without an outcome, failed rows under --retry-failed).
    Resuming a finished million-row folder then costs a read of the status columns, not
    a request_id computed for every row (~3 s) and a read of the journal (issue 10)."""
    if cfg.shard is not None or not results_current(run_dir, cfg, manifest):
        return None
    try:
        counts = results_counts(run_dir.results)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError: walk as before
        return None
    if counts.ok + counts.failed != _in_scope(manifest, cfg) or (cfg.retry_failed and counts.failed):
        return None
    return counts


def _prior_state(run_dir: RunDir, manifest: Manifest, cfg: JobConfig,
                 asker: Asker | None) -> tuple[Counts, list[Outcome], IdIndex]:  # fmt: skip
    """(what the folder holds, as progress counts it; outcomes to journal without a request; what to skip)."""
    prior, reused, skip_prior = _prior(run_dir, manifest, cfg, asker)
    return _prior_counts(prior, cfg.retry_failed), reused, run_dir.skip_index(cfg.retry_failed, skip_prior)


def _prior(run_dir: RunDir, manifest: Manifest, cfg: JobConfig, asker: Asker | None) -> tuple[Any, list[Outcome], Any]:
    """(what the folder holds: request_id and status, outcomes to journal without a request, what to skip).

    Only a structured run whose schema changed since the last run differs from the plain
    read (pipeline/structured/reuse.py): stale answers are asked again, fitting ones reused."""
    prior = run_dir.latest(["request_id", "status"])
    if asker is None:
        return prior, [], prior
    from .structured.reuse import mark_stale, reuse

    reused, stale = reuse(run_dir, manifest, cfg, asker.checker)
    prior, skip = mark_stale(prior, stale)
    if not reused:
        return prior, [], skip
    import pyarrow as pa

    ids = pa.table({"request_id": [o.request_id for o in reused], "status": ["ok"] * len(reused)})
    return prior, reused, pa.concat_tables([skip, ids.cast(skip.schema)])


def _prior_counts(prior: Any, retry_failed: bool) -> Counts:
    """What the folder already holds, as progress counts it (failed rows count as to do
    again under --retry-failed)."""
    if not prior.num_rows:
        return Counts(ok=0, failed=0)  # a fresh run: no pyarrow.compute import (0.1-0.2 s) before its first request
    import pyarrow.compute as pc

    ok = pc.sum(pc.equal(prior["status"], string_scalar("ok"))).as_py() or 0
    failed = 0 if retry_failed else prior.num_rows - ok
    return Counts(ok=ok, failed=failed)


async def run_async(cfg: JobConfig, *, progress: ProgressDisplay | None = None,
                    install_signals: bool = False) -> RunSummary:  # fmt: skip
    """Run a job on the current event loop (``await run_async(cfg)`` from async code); returns its summary."""
    return await Run(cfg, progress=progress, install_signals=install_signals).execute()


def run(cfg: JobConfig | None = None, *, display: ProgressDisplay | None = None, install_signals: bool = False,
        **settings: Any) -> RunSummary:  # fmt: skip
    """Run a job to the end and return its :class:`RunSummary`.

    ``run(load_config("jobs/x.toml"))`` or ``run(manifest="m.csv", out="out", concurrency=32)``;
    settings are :class:`~pipeline.config.JobConfig` fields (``progress="none"`` for silence).
    ``display`` replaces the progress display the ``progress`` setting would pick.
    Called where an event loop is already running (a Jupyter cell), the run gets its
    own loop on a worker thread and this call blocks until it ends; async code should
    ``await run_async(cfg)`` instead. Raises :class:`~pipeline.errors.UsageError` for
    bad input before anything is sent."""
    from .config import load_config
    from .report import make_progress

    if cfg is None:
        cfg = load_config(**settings)
    elif settings:
        cfg = cfg.replace(**settings)
    if display is None:
        display = make_progress(cfg.progress, cfg.progress_interval)
    if cfg.engine != "asyncio" or "://" in f"{cfg.manifest}{cfg.out}":  # Ray, object storage: pipeline/staging.py
        from .staging import dispatch

        return dispatch(cfg, display=display, install_signals=install_signals)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_loop(run_async(cfg, progress=display, install_signals=install_signals))
    # signal handlers belong to the main thread's loop: the caller's loop keeps its own
    job = run_async(cfg, progress=display, install_signals=False)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="docpipe-run") as pool:
        return pool.submit(_run_loop, job).result()


def _run_loop(coro: Coroutine[Any, Any, RunSummary]) -> RunSummary:
    """A fresh event loop for one run (uvloop where installed; the caller's policy is not touched)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.run(coro)
    result: RunSummary = uvloop.run(coro)
    return result


__all__ = ["Run", "RunSummary", "run", "run_async"]
