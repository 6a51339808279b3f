"""The worker pool that joins reader -> client -> journal, and the run's lifecycle.

``run(cfg)`` is the library entry point (a notebook, an orchestrator task);
``docpipe run`` is this call plus option parsing and exit codes.

Shape of a run: one producer task streams manifest batches into a bounded
queue; ``concurrency`` worker tasks each take a row, pass the pacer (pause gate,
adaptive in-flight limit, RPM/TPM) and send it; outcomes go to the journal
writer, which makes them durable about once a second. A stop (signal, deadline,
budget, circuit breaker, disk trouble) ends dispatch at once; in-flight
requests finish within the grace period; rows never answered stay *pending*
(not failed) so that the next run sends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import signal
import time
from datetime import datetime, timezone
from typing import Any, Callable

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .budget import BudgetGuard, check_before_start, completion_estimate, estimate_rows
from .client import GatewayClient, short
from .compaction import compact
from .config import JobConfig
from .errors import (
    DocpipeError,
    NoChannel,
    RateLimited,
    RequestError,
    RetryableError,
    RunFatalError,
    StorageError,
    UnreadableDocument,
    UsageError,
)
from .journal import JournalWriter
from .limits import Breaker, Pacer
from .manifest import Manifest
from .records import Completion, Outcome, Row, RunSummary, Snapshot
from .retry import retrying, should_retry
from .rundir import RunDir
from .storage import atomic_write_bytes
from .tokens import estimate_prompt

log = logging.getLogger("docpipe")
COMPACTED_MARK = ".compacted.json"  # what results.parquet was last built from

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3
#: 429s do not use up --max-attempts, but a row never sends more than this many times that
MAX_ATTEMPTS_WITH_429S = 5


class _Stopped(Exception):
    """Internal: the run is stopping, leave this row pending."""


class _Stats:
    __slots__ = ("requests", "ok", "failed", "tokens", "prompt", "completion", "cost", "sent_rows",
                 "started", "prior_done", "prior_ok", "prior_failed")  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.ok = self.failed = self.tokens = self.prompt = self.completion = 0
        self.cost = 0.0
        self.sent_rows = 0
        self.started = time.monotonic()
        self.prior_done = self.prior_ok = self.prior_failed = 0


class Run:
    """One run of one job. Use :func:`run` or :func:`run_async` rather than this directly."""

    def __init__(self, cfg: JobConfig, *, progress: Any = None, install_signals: bool = False) -> None:
        if not cfg.manifest:
            raise UsageError("no manifest given")
        if not cfg.out:
            raise UsageError("no output folder given (--out)")
        self.cfg = cfg
        self.progress = progress
        self.install_signals = install_signals
        self.run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
        self.stats = _Stats()  # started now: time to first request counts manifest checks
        self.stop_reason: str | None = None
        self._stopping = asyncio.Event()
        self._waiting: set[asyncio.Task[Any] | None] = set()
        self._sending = 0
        self._completion_estimate = completion_estimate(cfg)
        self._signals = 0
        self._no_channel_streak = 0
        self._started_at = datetime.now(timezone.utc)
        self.errors_by_type: dict[str, int] = {}
        self.timings: dict[str, float | None] = {"first_request_s": None, "compaction_s": None}

    # -- stopping --------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, reason: str) -> None:
        """End dispatch: every stop (signal, deadline, budget, breaker, disk) is an abort."""
        if not self._stopping.is_set():
            self.stop_reason = reason
            self._stopping.set()
            log.warning("stopping: %s", reason)
            for task in list(self._waiting):
                if task is not None:
                    task.cancel()

    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_stop(f"{signame}: finishing in-flight requests (grace {self.cfg.grace_period:g} s)")
            return
        # second signal: leave at once; the journal drops a torn last line, so it stays consistent
        log.error("second %s: exiting now", signame)
        try:
            self.journal.flush_sync()
            self._write_run_info(self._summary(f"{signame} twice: exited at once", EXIT_ABORTED))
        finally:
            os._exit(EXIT_ABORTED)

    # -- the run -----------------------------------------------------------------

    async def execute(self) -> RunSummary:
        cfg = self.cfg
        manifest = Manifest(cfg.manifest, cfg)  # type: ignore[arg-type]
        self.manifest = manifest
        self.run_dir = RunDir(cfg.out)  # type: ignore[arg-type]
        self.run_dir.prepare()
        try:
            return await self._execute(manifest)
        finally:
            self.run_dir.release()

    async def _execute(self, manifest: Manifest) -> RunSummary:
        cfg = self.cfg
        prior = self.run_dir.latest(["request_id", "status"])
        skip = self.run_dir.skip_index(cfg.retry_failed, prior)
        self.rows_total = manifest.num_rows if cfg.limit is None else min(cfg.limit, manifest.num_rows)
        if prior.num_rows:
            self.stats.prior_ok = pc.sum(pc.equal(prior["status"], "ok")).as_py() or 0
            self.stats.prior_failed = prior.num_rows - self.stats.prior_ok if not cfg.retry_failed else 0
            self.stats.prior_done = self.stats.prior_ok + self.stats.prior_failed
        del prior
        self.budget = BudgetGuard(cfg)
        if self.budget.active:
            why = check_before_start(await asyncio.to_thread(estimate_rows, manifest, skip, cfg), cfg)
            if why:
                raise UsageError(f"{why}; nothing was sent")
        self.journal = JournalWriter(self.run_dir, self.run_id, cfg.model)
        self.journal.on_error = lambda e: self.request_stop(str(e))
        self.pacer = Pacer(
            concurrency=cfg.concurrency,
            adaptive=cfg.adaptive,
            rpm=cfg.rpm,
            tpm=cfg.tpm,
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            breaker=Breaker(cfg.breaker_threshold, cfg.breaker_probes, cfg.breaker_pause),
        )
        loop = asyncio.get_running_loop()
        if self.install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
        self._write_run_info(self._summary("running", EXIT_ABORTED, running=True))
        queue: asyncio.Queue[Row | None] = asyncio.Queue(maxsize=2 * cfg.concurrency)
        tasks: list[asyncio.Task[Any]] = []
        producer_error: BaseException | None = None
        try:
            async with GatewayClient(cfg) as client:
                self.client = client
                producer = asyncio.create_task(self._produce(manifest, skip, queue))
                workers = [asyncio.create_task(self._work(queue)) for _ in range(cfg.concurrency)]
                tasks = [producer, *workers]
                flusher = asyncio.create_task(self._flush_every(cfg.flush_interval))
                ticker = asyncio.create_task(self._tick()) if self.progress is not None else None
                timer = asyncio.create_task(self._deadline()) if (cfg.deadline or cfg.max_runtime) else None
                stop_waiter = asyncio.create_task(self._stopping.wait())
                done_all = asyncio.gather(*workers)
                await asyncio.wait([done_all, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
                if self.stopping:
                    producer.cancel()
                    _drain(queue, cfg.concurrency)
                    _, still = await asyncio.wait(workers, timeout=cfg.grace_period)
                    if still:
                        log.warning("%d requests still in flight after the grace period: abandoned", len(still))
                        for t in still:
                            t.cancel()
                        await asyncio.gather(*still, return_exceptions=True)
                await asyncio.gather(done_all, return_exceptions=True)
                await asyncio.gather(producer, return_exceptions=True)
                if producer.done() and not producer.cancelled():
                    producer_error = producer.exception()
                for t in (flusher, ticker, timer, stop_waiter):
                    if t is not None:
                        t.cancel()
                await asyncio.gather(*(t for t in (flusher, ticker, timer, stop_waiter) if t), return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
            if self.install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        storage_error: StorageError | None = None
        try:
            await self.journal.flush()
        except StorageError as e:
            storage_error = e
            self.request_stop(str(e))
        finally:
            self.journal.close()
        if storage_error is None and not self._results_current(manifest):
            try:
                t0 = time.monotonic()
                release_memory()  # the pool's buffers are garbage now; compaction's peak should not stack on them
                await asyncio.to_thread(compact, self.run_dir, manifest)
                self.timings["compaction_s"] = round(time.monotonic() - t0, 4)
                self._mark_results_current(manifest)
            except OSError as e:
                storage_error = StorageError(f"{self.run_dir.results}: cannot write results: {e.strerror or e}")
                self.request_stop(str(storage_error))
        summary = self._final_summary()
        if self.progress is not None:
            self.progress.close(self._snapshot())
        try:
            self._write_run_info(summary)
        except OSError as e:
            log.error("cannot write %s: %s", self.run_dir.run_file, e)
        if producer_error is not None:  # everything answered is kept; now say what broke
            raise producer_error
        return summary

    def _results_fingerprint(self, manifest: Manifest) -> dict[str, Any]:
        st = os.stat(manifest.path)
        return {"journal": [p.name for p in self.run_dir.parts()],
                "manifest": [os.path.abspath(manifest.path), st.st_size, st.st_mtime_ns],
                "scope": [self.cfg.limit, self.cfg.shard, self.cfg.model, self.cfg.system,
                          dict(self.cfg.params), self.cfg.template, self.cfg.id_column,
                          self.cfg.file_url_column, self.cfg.question_column]}  # fmt: skip

    def _results_current(self, manifest: Manifest) -> bool:
        """True when nothing was journaled and results.parquet already reflects this
        manifest and journal: a resume with nothing to do skips compaction."""
        if self.journal.written or not self.run_dir.results.exists():
            return False
        try:
            mark = json.loads((self.run_dir.journal / COMPACTED_MARK).read_text())
        except (OSError, ValueError):
            return False
        return bool(mark == json.loads(json.dumps(self._results_fingerprint(manifest))))

    def _mark_results_current(self, manifest: Manifest) -> None:
        data = json.dumps(self._results_fingerprint(manifest)).encode()
        atomic_write_bytes(self.run_dir.journal / COMPACTED_MARK, data)

    async def _produce(self, manifest: Manifest, skip: Any, queue: asyncio.Queue[Row | None]) -> None:
        try:
            await self._produce_rows(manifest, skip, queue)
        except Exception as e:
            # workers wait on the queue: without a stop they would wait for ever
            self.request_stop(f"reading the manifest failed: {e}")
            raise

    async def _produce_rows(self, manifest: Manifest, skip: Any, queue: asyncio.Queue[Row | None]) -> None:
        now = time.time
        for rows in manifest.rows(skip):
            for row in rows:
                if self.stopping:
                    return
                if row.invalid is not None:
                    t = now()
                    self._record(_outcome(row, "failed", None, t, t, 0, None, self.cfg,
                                          error=("invalid_input", row.invalid, None, None)))  # fmt: skip
                    continue
                await queue.put(row)
            # let workers and the flusher run between batches even when every row is skipped
            await asyncio.sleep(0)
        for _ in range(self.cfg.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[Row | None]) -> None:
        while True:
            row = await queue.get()
            if row is None or self.stopping:
                return
            outcome = await self._process(row)
            if outcome is not None:
                self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        try:
            self.journal.add(outcome)
        except StorageError as e:
            self.request_stop(str(e))
            return
        s = self.stats
        if outcome.status == "ok":
            s.ok += 1
            s.prompt += outcome.prompt_tokens or 0
            s.completion += outcome.completion_tokens or 0
            s.tokens += outcome.total_tokens or 0
        else:
            s.failed += 1
            et = outcome.error_type or "unknown"
            self.errors_by_type[et] = self.errors_by_type.get(et, 0) + 1
        if outcome.cost_usd:
            s.cost += outcome.cost_usd

    async def _attempt(self, row: Row, estimate: int) -> tuple[Completion, float]:
        breaker = self.pacer.breaker
        if breaker.is_open:
            async with breaker.lock:
                if breaker.is_open:  # still open: this row is the probe
                    await self._sleep(breaker.wait_s)
                    if self.stopping:
                        raise _Stopped
                    log.warning("gateway failing: probing with one request")
                    return await self._send(row, estimate, probe=True)
        return await self._send(row, estimate, probe=False)

    async def _send(self, row: Row, estimate: int, *, probe: bool) -> tuple[Completion, float]:
        pacer = self.pacer
        task = asyncio.current_task()
        # a stop cancels tasks still waiting for a slot or a limiter: they have sent nothing
        self._waiting.add(task)
        try:
            await pacer.slots.acquire()
        except asyncio.CancelledError:
            raise _Stopped from None
        finally:
            self._waiting.discard(task)
        try:
            self._waiting.add(task)
            try:
                await pacer.before_attempt(estimate + self._completion_estimate)
            except asyncio.CancelledError:
                raise _Stopped from None
            finally:
                self._waiting.discard(task)
            if self.stopping:
                raise _Stopped
            if self.budget.active and (why := self.budget.refuse(estimate, self._sending)):
                self.request_stop(why)
                raise _Stopped
            self.stats.requests += 1
            t0 = time.monotonic()
            if self.timings["first_request_s"] is None:
                self.timings["first_request_s"] = round(t0 - self.stats.started, 4)
            try:
                self._sending += 1
                try:
                    completion = await self.client.complete(row)
                finally:
                    self._sending -= 1
            except RequestError as e:
                pacer.failed(rate_limited=isinstance(e, RateLimited), retry_after=e.retry_after)
                hold = slot_hold(self.cfg)
                if isinstance(e, RateLimited) and e.retry_after is None and hold:
                    await self._sleep(random.uniform(0.5, 1.0) * hold)
                self._check_fatal(e)
                if type(e) is RetryableError and pacer.breaker.failure(probe=probe):
                    fatal = RunFatalError(
                        f"the gateway kept failing: {pacer.breaker.failures} errors in a row and "
                        f"{pacer.breaker.probes_failed} failed probes; last: {e.message}",
                        error_type=e.error_type,
                        http_status=e.http_status,
                    )
                    self._abort(fatal)
                    raise fatal from None
                raise
            latency = time.monotonic() - t0
            self._no_channel_streak = 0
            if self.budget.active:
                self.budget.record(completion.total_tokens,
                                   self.cfg.cost(completion.prompt_tokens, completion.completion_tokens))
            pacer.breaker.success()
            pacer.answered(completion.total_tokens, latency)
            return completion, latency
        finally:
            pacer.slots.release()

    def _check_fatal(self, e: RequestError) -> None:
        if isinstance(e, NoChannel):
            self._no_channel_streak += 1
            if self._no_channel_streak >= self.cfg.no_channel_attempts:
                fatal = RunFatalError(
                    f"model {self.cfg.model!r} is not served for this key's group ({e.message})",
                    error_type="no_channel",
                    http_status=e.http_status,
                )
                self._abort(fatal)
                raise fatal
        if isinstance(e, RunFatalError):
            self._abort(e)

    def _abort(self, e: RunFatalError) -> None:
        if not self.stopping:
            log.error("aborting: %s [gateway id %s]", e, e.gateway_request_id,
                      extra={"error_type": e.error_type, "gateway_request_id": e.gateway_request_id})  # fmt: skip
        hint = {
            "auth": "check the API key (--api-key, APICORE_API_KEY or OPENAI_API_KEY)",
            "quota": "top up the key's quota or balance",
            "no_channel": "choose a model this key's group serves (docpipe models)",
        }.get(e.error_type, "fix the settings")
        self.request_stop(f"{e.error_type}: {e}; {hint}, then run the same command again to resume")

    async def _process(self, row: Row) -> Outcome | None:
        cfg = self.cfg
        started = time.time()
        estimate = estimate_prompt(row.content, cfg.system)
        attempts = 0
        limited = 0  # 429s: not processed by the gateway, so not counted against --max-attempts
        unreadable_left = cfg.unreadable_retries
        latency: float | None = None

        async def attempt() -> Completion:
            nonlocal attempts, latency, limited
            attempts += 1
            try:
                completion, latency = await self._attempt(row, estimate)
            except RateLimited:
                limited += 1
                raise
            return completion

        def exhausted() -> bool:
            return attempts - limited >= cfg.max_attempts or attempts >= MAX_ATTEMPTS_WITH_429S * cfg.max_attempts

        def retry_on(e: BaseException) -> bool:
            nonlocal unreadable_left
            ok = should_retry(e, unreadable_left)
            if isinstance(e, UnreadableDocument):
                unreadable_left -= 1
            if isinstance(e, RequestError):
                log.debug("%s %s after attempt %d: %s [gateway id %s]", "retry" if ok else "give up on",
                          row.request_id, attempts, e, e.gateway_request_id,
                          extra={"request_id": row.request_id, "gateway_request_id": e.gateway_request_id,
                                 "attempt": attempts, "error_type": e.error_type, "retry": ok})  # fmt: skip
            return ok

        try:
            try:
                completion = await attempt()
            except (RetryableError, UnreadableDocument) as first:
                if cfg.max_attempts <= 1 or not retry_on(first):
                    raise
                completion = await self._retry(attempt, retry_on, exhausted=exhausted,
                                               deadline=time.monotonic() + cfg.row_budget)  # fmt: skip
        except _Stopped:
            return None
        except RunFatalError:
            return None
        except RequestError as e:
            if self.stopping and isinstance(e, RetryableError) and not exhausted():
                return None  # interrupted between retries: pending, not failed
            self.stats.sent_rows += 1
            return _outcome(row, "failed", None, started, time.time(), attempts, latency, cfg,
                            error=(e.error_type, e.message, e.http_status, e.gateway_request_id))  # fmt: skip
        self.stats.sent_rows += 1
        return _outcome(row, "ok", completion, started, time.time(), attempts, latency, cfg)

    async def _retry(
        self,
        attempt: Callable[[], Any],
        retry_on: Callable[[BaseException], bool],
        *,
        exhausted: Callable[[], bool],
        deadline: float,
    ) -> Completion:
        controller = retrying(
            exhausted=exhausted,
            deadline=deadline,
            initial=self.cfg.backoff_initial,
            maximum=self.cfg.backoff_max,
            retry=retry_on,
            stop_now=lambda: self.stopping,
            sleep=self._sleep,
        )
        async for try_ in controller:
            with try_:
                return await attempt()  # type: ignore[no-any-return]
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    async def _sleep(self, seconds: float) -> None:
        """Back-off that a stop cuts short (the next attempt then sees the stop)."""
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.journal.flush()
            except StorageError as e:
                self.request_stop(str(e))
                return

    async def _deadline(self) -> None:
        cfg = self.cfg
        waits = []
        if cfg.max_runtime:
            waits.append((cfg.max_runtime, f"max runtime {cfg.max_runtime:g} s reached"))
        if cfg.deadline:
            waits.append((seconds_until(cfg.deadline), f"deadline {cfg.deadline} reached"))
        delay, reason = min(waits)
        await asyncio.sleep(max(0.0, delay))
        self.request_stop(reason)

    async def _tick(self) -> None:
        interval = self.progress.interval
        while True:
            await asyncio.sleep(interval)
            self.progress.update(self._snapshot())

    # -- reporting -----------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        s = self.stats
        elapsed = time.monotonic() - s.started
        done_now = s.ok + s.failed
        rate = done_now / elapsed if elapsed > 0 else 0.0
        done = s.prior_done + done_now
        left = max(0, self.rows_total - done)
        return Snapshot(
            rows_total=self.rows_total,
            rows_done=done,
            ok=s.prior_ok + s.ok,
            failed=s.prior_failed + s.failed,
            in_flight=self.pacer.slots.in_flight,
            requests=s.requests,
            tokens=s.tokens,
            cost_usd=s.cost if self.cfg.has_prices else None,
            elapsed=elapsed,
            rows_per_s=rate,
            eta_s=left / rate if rate > 0 else None,
            concurrency=self.pacer.slots.current,
        )

    def _final_summary(self) -> RunSummary:
        ok = failed = prompt = completion = total = 0
        cost: float | None = None
        errors: dict[str, int] = {}
        if self.run_dir.results.exists():
            t = pq.read_table(self.run_dir.results,
                              columns=["status", "error_type", "prompt_tokens", "completion_tokens",
                                       "total_tokens", "cost_usd"])  # fmt: skip
            ok = pc.sum(pc.equal(t["status"], "ok")).as_py() or 0
            failed = t.num_rows - ok
            prompt = pc.sum(t["prompt_tokens"]).as_py() or 0
            completion = pc.sum(t["completion_tokens"]).as_py() or 0
            total = pc.sum(t["total_tokens"]).as_py() or 0
            if self.cfg.has_prices:
                cost = pc.sum(t["cost_usd"]).as_py() or 0.0
            for item in pc.value_counts(t["error_type"].drop_null()).to_pylist():
                errors[item["values"]] = item["counts"]
        pending = max(0, self.rows_total - ok - failed)
        if self.stopping:
            code, ended = EXIT_ABORTED, "aborted"
        elif failed:
            code, ended = EXIT_FAILED_ROWS, "completed_with_failures"
        elif pending:
            code, ended = EXIT_ABORTED, "aborted"
        else:
            code, ended = EXIT_OK, "completed"
        return self._summary(self.stop_reason, code, ended=ended, ok=ok, failed=failed,
                             pending=pending, tokens=(prompt, completion, total), cost=cost,
                             errors=errors)  # fmt: skip

    def _summary(
        self,
        reason: str | None,
        code: int,
        *,
        running: bool = False,
        ended: str = "aborted",
        ok: int | None = None,
        failed: int | None = None,
        pending: int | None = None,
        tokens: tuple[int, int, int] | None = None,
        cost: float | None = None,
        errors: dict[str, int] | None = None,
    ) -> RunSummary:
        s = self.stats
        snap_ok = s.prior_ok + s.ok if ok is None else ok
        snap_failed = s.prior_failed + s.failed if failed is None else failed
        return RunSummary(
            run_id=self.run_id,
            out=str(self.cfg.out),
            ended="running" if running else ended,
            reason=reason,
            exit_code=code,
            rows_total=getattr(self, "rows_total", 0),
            ok=snap_ok,
            failed=snap_failed,
            pending=pending if pending is not None else max(0, getattr(self, "rows_total", 0) - snap_ok - snap_failed),
            sent_this_run=s.sent_rows,
            requests=s.requests,
            prompt_tokens=tokens[0] if tokens else s.prompt,
            completion_tokens=tokens[1] if tokens else s.completion,
            total_tokens=tokens[2] if tokens else s.tokens,
            cost_usd=cost if cost is not None else (s.cost if self.cfg.has_prices else None),
            elapsed_s=round(time.monotonic() - s.started, 3),
            errors_by_type=errors if errors is not None else dict(self.errors_by_type),
            concurrency_final=self.pacer.slots.current if hasattr(self, "pacer") else 0,
            max_in_flight=self.pacer.slots.max_seen if hasattr(self, "pacer") else 0,
        )

    def _write_run_info(self, summary: RunSummary) -> None:
        from dataclasses import asdict

        info = {
            **asdict(summary),
            "started_at": self._started_at.isoformat(),
            "ended_at": datetime.now(timezone.utc).isoformat(),
            "manifest": self.cfg.manifest,
            "this_run": {"requests": self.stats.requests, "ok": self.stats.ok, "failed": self.stats.failed,
                         "prompt_tokens": self.stats.prompt, "completion_tokens": self.stats.completion,
                         "total_tokens": self.stats.tokens},  # fmt: skip
            "timings": dict(self.timings),
            "settings": self.cfg.public(),
        }
        self.run_dir.write_run_info(info)


def slot_hold(cfg: JobConfig) -> float:
    """How long a row that got an anonymous 429 keeps its slot (see limits.AdaptiveLimit)."""
    return min(cfg.backoff_initial, 1.0) if cfg.adaptive else 0.0


def _drain(queue: asyncio.Queue[Row | None], workers: int) -> None:
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            break
    for _ in range(workers):
        try:
            queue.put_nowait(None)
        except asyncio.QueueFull:
            break


def _outcome(
    row: Row,
    status: str,
    c: Completion | None,
    started: float,
    completed: float,
    attempts: int,
    latency: float | None,
    cfg: JobConfig,
    *,
    error: tuple[str, str, int | None, str | None] | None = None,
) -> Outcome:
    """The journal record for a row: from its completion, or from its last error."""
    error_type, message, http_status, gid = error or (None, None, None, None)
    return Outcome(
        request_id=row.request_id,
        row_index=row.index,
        status=status,
        answer=c.answer if c else None,
        finish_reason=c.finish_reason if c else None,
        response_model=c.response_model if c else None,
        prompt_tokens=c.prompt_tokens if c else None,
        completion_tokens=c.completion_tokens if c else None,
        total_tokens=c.total_tokens if c else None,
        usage_estimated=c.usage_estimated if c else False,
        error_type=error_type,
        error_message=short(message) if message else None,
        http_status=c.http_status if c else http_status,
        attempts=attempts,
        latency_ms=None if latency is None else latency * 1000.0,
        started_at=started,
        completed_at=completed,
        response_id=c.response_id if c else None,
        gateway_request_id=c.gateway_request_id if c else gid,
        cost_usd=cfg.cost(c.prompt_tokens, c.completion_tokens) if c else None,
    )


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc only)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def seconds_until(hhmm: str) -> float:
    """Seconds from now until the next local time HH:MM (today or tomorrow)."""
    try:
        hh, mm = (int(x) for x in hhmm.split(":"))
        if not (0 <= hh < 24 and 0 <= mm < 60):
            raise ValueError
    except ValueError:
        raise UsageError(f"deadline must be HH:MM (24 h, local time), not {hhmm!r}") from None
    now = datetime.now()
    target = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    delta = (target - now).total_seconds()
    return delta if delta > 0 else delta + 86400


async def run_async(cfg: JobConfig, *, progress: Any = None, install_signals: bool = False) -> RunSummary:
    """Run a job on the current event loop; returns its summary."""
    _pyarrow_without_pandas()
    return await Run(cfg, progress=progress, install_signals=install_signals).execute()


def _pyarrow_without_pandas() -> None:
    """Keep pyarrow from importing pandas behind our back (+45 MB RSS, 0.1 s).

    ``pa.array(list)`` asks whether pandas is there and imports it to find out. Where
    pandas is not loaded yet, hide it for one such call so pyarrow settles on "no
    pandas"; an explicit ``to_pandas()`` later still imports it (pyarrow retries)."""
    import importlib.abc
    import sys

    import pyarrow as pa

    if "pandas" in sys.modules:
        return

    class _NoPandas(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "pandas" or name.startswith("pandas."):
                raise ImportError("pandas hidden from pyarrow during a run")
            return None

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def run(cfg: JobConfig | None = None, *, display: Any = None, install_signals: bool = False,
        **settings: Any) -> RunSummary:  # fmt: skip
    """Run a job to the end and return its :class:`RunSummary`.

    ``run(load_config("jobs/x.toml"))`` or ``run(manifest="m.csv", out="out", concurrency=32)``;
    settings are :class:`~pipeline.config.JobConfig` fields (``progress="none"`` for silence).
    ``display`` replaces the progress display the ``progress`` setting would pick.
    Raises :class:`~pipeline.errors.UsageError` for bad input before anything is sent."""
    from .config import load_config
    from .report import make_progress

    if cfg is None:
        cfg = load_config(**settings)
    elif settings:
        cfg = cfg.replace(**settings)
    if display is None:
        display = make_progress(cfg.progress, cfg.progress_interval)
    return _run_loop(run_async(cfg, progress=display, install_signals=install_signals))


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.run(coro)
    return uvloop.run(coro)


__all__ = ["run", "run_async", "RunSummary", "Snapshot", "DocpipeError"]
