"""``docpipe bench``: throughput, client CPU per request and peak memory of the real
run path against the simulator (DESIGN.md section 9, issue 6).

Three processes, so that each figure belongs to one of them:

- the simulator (``docpipe simulate``) in its own process: it must not share the
  client's core or event loop, or the client would be charged for serving;
- the client, a plain ``docpipe run`` subprocess: what a user runs, imports and
  all, and as a user runs it: without ``--quiet``, so its figures include the
  report it prints at its end (stdout to a file, progress lines to stderr, as in
  a cron job's log; issue 10: ``--quiet`` had hidden a pandas import there). A
  bare launcher process between (see ``_LAUNCHER``) takes its rusage with
  ``os.wait4`` (CPU, peak RSS: its own, nobody else's, and not this process's resident
  set, which Linux would otherwise carry into a child's ``ru_maxrss``);
- this process, which only writes the manifest, waits and reads stats.

Figures of one run (:class:`RunResult`):

- ``throughput_rps``: requests / (last request arrival - first arrival + latency),
  from the simulator's clock. That is the steady-state rate Little's law bounds
  by ``concurrency / latency`` (for an ideal client the window is N*L/C); start-up
  and compaction are reported on their own rather than diluting it. ``wall_ratio``
  is the end-to-end figure (spawn to exit) against the same bound.
- ``cpu_us_per_request``: (user + sys) of the client process over its whole life
  (imports, manifest checks, journal, compaction) / requests sent.
- ``peak_rss_mb``: ``ru_maxrss`` of the client.
- ``first_request_s``, ``compaction_s``: ``timings`` from ``OUT/_run.json``;
  ``spawn_to_first_request_s`` adds interpreter start-up and imports (from the
  launcher's fork to the simulator's first chat request). ``first_request_cpu_s``:
  the client's CPU seconds when it sent that request, start-up included: the
  figure a busy machine does not inflate. ``interpreter_s``: the same interpreter
  running ``pass`` through the same launcher (Python itself and the environment's
  ``.pth`` files, e.g. an editable install's finder), best of three.
- Where the rest of the wall goes: ``startup_s`` (spawn to the run's start:
  interpreter, imports, options), ``finish_s`` (last answer to the final summary:
  HEADs still out, journal, compaction) and ``exit_s`` (``_run.json``, the HTML
  report, interpreter exit). ``startup_s`` takes the first request's arrival on the
  simulator's clock, so on a busy machine, where the simulator itself waits for a
  core, it runs long and ``exit_s`` short (even below 0).
- Bytecode: docpipe's own modules are byte-compiled before the client runs
  (:func:`ensure_bytecode`), as ``pip install`` does; under ``PYTHONDONTWRITEBYTECODE``
  an editable install would otherwise compile every module at each start (0.1-0.3 s
  that no installed copy pays).
- ``sim_cpu_share``: simulator CPU seconds / client wall time; near 1.0 means the
  simulator, not the client, was the limit.
- ``sim_late`` (:attr:`SimFigures.sim_late_ms`): how late, on average, the simulator's
  latency waits ended: its own delay, which every client sees as latency and no
  client can win back (0.7-0.9 ms at 500 answers a second, 0.4 % of 200 ms; uvloop
  in the simulator did not change it).
- ``ideal_send`` (:attr:`RunResult.ideal_send_s`, fault runs): first request to last answer
  of an ideal client on the same faults (:mod:`pipeline.benchfloor`: no overhead, no
  back-off, Retry-After exact, a hang holding its seat for the timeout). faults-unkind
  reports the ideal client's wall / clean wall beside the client's: the dice's share.
- ``foreign_cpu_share``: cores busy with *other* processes during the run (machine
  total from /proc/stat minus client and simulator); above ``BUSY_SHARE`` the line
  is flagged, since a second job on a 2-core machine halves every figure.
- ``resume_s`` (``--resume-check``): the same command again, spawn to exit.
- ``goodput_rps``: rows answered ok over the same window as ``throughput_rps``; the
  figure to compare when some requests are 429s answered at once.
- ``concurrency_final`` / ``limit_min``: the client's own view (``_run.json``): its
  concurrency limit at the end and the lowest one its timeline sampled.
- ``sim`` (:class:`SimFigures`): what the gateway saw. ``faults`` it injected,
  ``wasted`` requests (requests - rows - faults: a retry of a row that had already
  been answered, or a request the client gave up on that was not a planned hang),
  Retry-After 429s sent and retries that came early, seconds without a request
  (a pool-wide pause shows there), and after the first ``LATE_AFTER_S`` seconds the
  429 share and the mean requests in flight (ok answers per second x latency).

Scenarios of issue 10 run the client adaptive (no ``--fixed-concurrency``), as a user
does; the older ones keep it fixed so their figures stay comparable (``RunSpec``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .benchs3 import RayS3Spec

#: Default fault mix: the failures a client most often gets wrong (hang needs a
#: timeout, 429 without Retry-After needs our own back-off, truncated JSON in a 200).
DEFAULT_FAULTS = ("hang", "429", "truncated", "500", "502_html", "disconnect", "empty_choices")
#: Issue 10's unkind mix: 429 with Retry-After four times beside eight other kinds, so a
#: third of the faults are 429s (the simulator draws a kind listed n times n times as often).
UNKIND_FAULTS = ("429",) * 4 + ("500", "502_html", "503", "524_html", "hang", "disconnect", "truncated",
                                "empty_choices")  # fmt: skip
#: Load-independent 429s: half with Retry-After, half empty-bodied.
RANDOM_429S = ("429", "429_empty")
#: fault_attempts for faults on every attempt (a row would need far more attempts than any client makes).
EVERY_ATTEMPT = 100
#: 429 share and in-flight are judged after this warm-up (issue 10: "after the first 10 s").
LATE_AFTER_S = 10
_RATE_LIMITED = ("429", "429_empty", "capacity_429", "rpm_429")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Cores' worth of CPU used by other processes above which a run's figures are flagged.
BUSY_SHARE = 0.15


@dataclass(frozen=True)
class RunSpec:
    """One client run against a fresh simulator."""

    rows: int
    latency: float
    concurrency: int
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = DEFAULT_FAULTS
    timeout: float | None = None
    resume_check: bool = False
    row_group_rows: int | None = None  # None: pyarrow's default, what df.to_parquet gives
    fixed_concurrency: bool = True  # the client's --fixed-concurrency; False: its adaptive limit
    fault_attempts: int = 1  # attempts of a row that may draw a fault (simulator setting)
    retry_after_s: float | None = None  # Retry-After of the "429" fault kind; None: no header
    capacity: int | None = None  # simulator's in-flight cap (empty-body 429 above it)
    doc_meta: bool = True  # the client HEADs each document (served by the simulator, issue 12)
    engine: str = "asyncio"  # the client's --engine; "ray" starts a local Ray (issue 13)

    def sim_settings(self) -> dict[str, Any]:
        """Simulator settings beyond ``docpipe simulate``'s latency and fault flags."""
        return {"fault_attempts": self.fault_attempts, "retry_after_s": self.retry_after_s,
                "capacity": self.capacity}  # fmt: skip

    @property
    def bound_rps(self) -> float:
        """Little's law: no client can exceed concurrency / latency (the simulator's
        capacity, when lower, caps the concurrency that counts)."""
        in_flight = min(self.concurrency, self.capacity) if self.capacity is not None else self.concurrency
        return in_flight / self.latency if self.latency > 0 else float("inf")


@dataclass(frozen=True)
class SimFigures:
    """What the simulator saw of one run (see the module docstring)."""

    outcomes: dict[str, int]
    faults: int
    wasted: int
    duplicate_ok: int
    cancelled: int
    retry_after_sent: int
    retry_after_checked: int
    retry_after_violations: int
    retry_after_min_slack_s: float | None
    zero_request_seconds: int
    late_429_share: float | None
    late_in_flight: float | None
    sim_late_ms: float | None = None  # mean lag of the simulator's latency waits (its own delay)


@dataclass
class RunResult:
    """Figures of one run (see the module docstring for what each one means)."""

    spec: RunSpec
    exit_code: int
    requests: int
    ok: int
    failed: int
    wall_s: float
    throughput_rps: float
    bound_rps: float
    ratio: float
    wall_ratio: float
    cpu_s: float
    cpu_us_per_request: float
    client_cpu_share: float  # cpu_s / wall_s; above ~0.9 the client is CPU-bound
    peak_rss_mb: float
    first_request_s: float | None
    spawn_to_first_request_s: float | None
    compaction_s: float | None
    sim_max_in_flight: int
    sim_cpu_share: float | None
    foreign_cpu_share: float | None  # cores busy with other processes during the run
    resume_s: float | None = None
    resume_requests: int | None = None
    resume_exit_code: int | None = None
    stderr_tail: str = ""
    goodput_rps: float = 0.0
    concurrency_final: int | None = None
    limit_min: float | None = None
    sim: SimFigures | None = None
    ideal_send_s: float | None = None  # an ideal client's first request to last answer, same faults (benchfloor)
    first_request_cpu_s: float | None = None
    interpreter_s: float | None = None
    startup_s: float | None = None
    finish_s: float | None = None
    exit_s: float | None = None


@dataclass
class Check:
    """One target of the issue, judged."""

    name: str
    value: float
    target: str
    passed: bool
    before: str = ""  # the figure the issue measured before the work, for comparison


@dataclass
class ScenarioResult:
    name: str
    runs: dict[str, RunResult]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# --------------------------------------------------------------------------- machinery


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform()}  # fmt: skip


def write_manifest(path: Path, rows: int, row_group_rows: int | None = None,
                   files: str = "https://docs.example.com", per_doc: int = 1) -> None:  # fmt: skip
    """A distinct question per row, built in Arrow (no Python loop over rows), about
    ``{files}/bench/{i // per_doc}.pdf`` (the simulator's ``/files`` in a run): ``per_doc``
    questions per document, on consecutive rows, as a nightly manifest lists them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    idx = pc.cast(pa.array(np.arange(rows, dtype=np.int64)), pa.string())
    doc = pc.cast(pa.array(np.arange(rows, dtype=np.int64) // per_doc), pa.string())
    # pyarrow-stubs type the joined values as arrays only; scalars broadcast at run time
    urls = pc.binary_join_element_wise(f"{files}/bench/", doc, ".pdf", "")  # type: ignore[call-overload]
    questions = pc.binary_join_element_wise("What is the total of item ", idx, "?", "")  # type: ignore[call-overload]
    table = pa.table({"file_url": urls, "question": questions})
    pq.write_table(table, path, row_group_size=row_group_rows, compression="zstd")


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a running process, from /proc (the simulator never exits in time)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class Simulator:
    """``docpipe simulate`` in its own process, on a free port."""

    def __init__(self, spec: RunSpec, log: Path) -> None:
        cmd = [sys.executable, "-m", "pipeline.cli", "simulate", "--port", "0",
               "--latency", str(spec.latency), "--jitter", "0"]  # fmt: skip
        if spec.fault_rate:
            cmd += ["--fault-rate", str(spec.fault_rate), "--fault-kinds", ",".join(spec.fault_kinds)]
        self._log = open(log, "wb")  # noqa: SIM115 - the simulator writes to it until stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "simulator listening on http://HOST:PORT/v1"
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r} (see {log})")
        self.url = line.split("listening on ", 1)[1].strip()
        self.root = self.url.rsplit("/v1", 1)[0]
        try:
            self.configure(spec.sim_settings())
        except OSError:
            self.stop()
            raise

    def _call(self, path: str, method: str = "GET", body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.root + path, method=method, data=data)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def configure(self, settings: dict[str, Any]) -> None:
        """Apply simulator settings through its control plane (``POST /_sim/config``)."""
        self._call("/_sim/config", "POST", settings)

    def reset(self) -> float:
        """Clear stats; returns our monotonic time of the reset, which is the simulator's
        new t0 to within a round trip (CLOCK_MONOTONIC is shared by all processes)."""
        before = time.monotonic()
        self._call("/_sim/reset", "POST")
        return (before + time.monotonic()) / 2

    def stats(self) -> dict[str, Any]:
        return self._call("/_sim/stats")  # type: ignore[no-any-return]

    def cpu_seconds(self) -> float | None:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def simulator(spec: RunSpec, log: Path) -> Iterator[Simulator]:
    sim = Simulator(spec, log)
    try:
        yield sim
    finally:
        sim.stop()


#: Runs between this process and the client. Linux carries a parent's resident set into
#: its child's ``ru_maxrss`` (fork copies the high-water mark, exec keeps it), and this
#: process holds pipeline.cli's imports, a manifest writer and the simulator's stats: a
#: client spawned from here could never report less than that. The launcher is a bare
#: interpreter (-I -S: a few MB) that forks the client, waits for it with wait4 (its
#: rusage only) and writes its own clock readings around it.
_LAUNCHER = """
import os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execv(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
t1 = time.monotonic()
with open(out, "w") as f:
    f.write(" ".join(map(repr, (os.waitstatus_to_exitcode(status), t0, t1, ru.ru_utime + ru.ru_stime, ru.ru_maxrss))))
"""


@dataclass(frozen=True)
class ClientExit:
    """How one client process ended, measured by the launcher around it."""

    code: int
    spawned: float  # time.monotonic() just before the fork (CLOCK_MONOTONIC: shared by all processes)
    wall: float
    cpu_s: float  # user + sys of the client alone
    maxrss_kb: int  # the client's own peak RSS (Linux reports KiB)


def run_client(cmd: list[str], stderr: Path, env: dict[str, str] | None = None) -> ClientExit:
    """Run ``cmd`` (its first item an interpreter path) to the end through the launcher
    (``env``: the client's environment; None: this process's). Its stdout goes to a file
    beside ``stderr`` (``.out``), as a cron job's or a ``| tee`` would: what it prints is
    written, not thrown away."""
    readings = stderr.with_suffix(".exit")
    readings.unlink(missing_ok=True)
    with open(stderr, "wb") as err, open(stderr.with_suffix(".out"), "wb") as out:
        code = subprocess.call([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(readings), *cmd],
                               stdout=out, stderr=err, env=env)  # fmt: skip
    try:
        exit_code, t0, t1, cpu, maxrss = readings.read_text().split()
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"client launcher failed (exit {code}): {_tail(stderr)}") from exc
    return ClientExit(int(exit_code), float(t0), float(t1) - float(t0), float(cpu), int(maxrss))


def ensure_bytecode() -> bool:
    """Byte-compile docpipe's modules where they are missing or stale (``compileall``
    writes even under ``PYTHONDONTWRITEBYTECODE``), as ``pip install`` does for an
    installed copy; False when some could not be written (the client then compiles them
    at start-up, which its figures include)."""
    import compileall

    return bool(compileall.compile_dir(Path(__file__).parent, quiet=1))


def interpreter_seconds(work: Path, tries: int = 3) -> float:
    """Wall of ``python -c pass`` through the launcher: what any program in this
    environment pays before its first import (best of ``tries``)."""
    return min(run_client([sys.executable, "-c", "pass"], work / "interpreter.err").wall for _ in range(tries))


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _throughput(times: list[float], requests: int, latency: float) -> float:
    """Requests/s from the simulator's arrival times (see the module docstring)."""
    if len(times) < 2:
        return 0.0
    if len(times) < requests:  # the simulator keeps only the last 200 000: their own rate
        return (len(times) - 1) / (times[-1] - times[0])
    return requests / (times[-1] - times[0] + latency)


def _saturated_until(spec: RunSpec, timeline: list[dict[str, int]]) -> int:
    """The first second in which the rows left to answer could no longer fill every slot
    (fewer than the in-flight the run could hold): in-flight is judged before it only."""
    slots = min(spec.concurrency, spec.capacity) if spec.capacity is not None else spec.concurrency
    answered = 0
    for second, bucket in enumerate(timeline):
        answered += bucket.get("ok", 0)
        if answered >= spec.rows - slots:
            return second
    return len(timeline)


def sim_figures(spec: RunSpec, stats: dict[str, Any]) -> SimFigures:
    """The gateway's view of a run, from its ``/_sim/stats`` (pure: tests feed it dicts)."""
    outcomes = {k: int(v) for k, v in stats.get("outcomes", {}).items() if v}
    faults = sum(v for k, v in outcomes.items() if k != "ok")
    ra = stats.get("retry_after", {})
    timeline: list[dict[str, int]] = stats.get("timeline", [])
    per_second = [sum(b.values()) for b in timeline]
    busy = [i for i, n in enumerate(per_second) if n]
    zero = sum(1 for n in per_second[busy[0] : busy[-1] + 1] if not n) if busy else 0
    share = in_flight = None
    times = stats.get("request_times") or []
    start = (int(times[0]) if times else (busy[0] if busy else 0)) + LATE_AFTER_S
    late = timeline[start : busy[-1] + 1] if busy else []
    if late:
        limited = sum(b.get(k, 0) for b in late for k in _RATE_LIMITED)
        share = round(limited / max(1, sum(per_second[start : busy[-1] + 1])), 4)
        full = timeline[start : min(_saturated_until(spec, timeline), busy[-1])]  # the last second is partial
        if full:
            upstream = sum(n for b in full for k, n in b.items() if k not in _RATE_LIMITED)
            in_flight = round(upstream / len(full) * spec.latency, 1)
    return SimFigures(
        outcomes=outcomes,
        faults=faults,
        wasted=int(stats.get("requests", 0)) - spec.rows - faults,
        duplicate_ok=int(stats.get("duplicate_ok", 0)),
        cancelled=int(stats.get("cancelled", 0)),
        retry_after_sent=int(ra.get("sent", 0)),
        retry_after_checked=int(ra.get("checked", 0)),
        retry_after_violations=int(ra.get("violations", 0)),
        retry_after_min_slack_s=ra.get("min_slack_s"),
        zero_request_seconds=zero,
        late_429_share=share,
        late_in_flight=in_flight,
        sim_late_ms=stats.get("late_ms_mean"),
    )


def _wall_parts(wall: float, spawn_first: float | None, timings: dict[str, Any]) -> dict[str, float | None]:
    """``startup_s``, ``finish_s`` and ``exit_s`` (module docstring) from the client's timings."""
    first, done, finished = (timings.get(k) for k in ("first_request_s", "requests_done_s", "finished_s"))
    startup = spawn_first - first if spawn_first is not None and first is not None else None
    finish = finished - done if finished is not None and done is not None else None
    end = wall - startup - finished if startup is not None and finished is not None else None
    return {"startup_s": _round(startup), "finish_s": _round(finish), "exit_s": _round(end)}


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _client_view(info: dict[str, Any]) -> tuple[int | None, float | None]:
    """(final concurrency limit, lowest limit sampled) from ``_run.json``."""
    limits = [p["limit"] for p in info.get("timeline", []) if p.get("limit")]
    final = info.get("concurrency_final")
    return (int(final) if final is not None else None), (min(limits) if limits else None)


@dataclass(frozen=True)
class _Readings:
    """What one measured client run left behind: its exit, clocks and the simulator's counts."""

    client: ClientExit
    stats: dict[str, Any]
    info: dict[str, Any]
    sim_t0: float
    sim_cpu: tuple[float | None, float | None]
    busy: tuple[float | None, float | None]
    resume: ClientExit | None
    resume_requests: int | None


def _drive(spec: RunSpec, work: Path, manifest: Path, out: Path, profile: Path | None) -> _Readings:
    """Start the simulator, run the client (and the resume check) against it, read the counts."""
    with simulator(spec, work / "sim.log") as sim:
        # the documents are the simulator's, so the client's HEADs (doc metadata) stay on this machine
        write_manifest(manifest, spec.rows, spec.row_group_rows, files=sim.root + "/files")
        run = ["-m", "pipeline.cli", "run", str(manifest), "--out", str(out), "--base-url", sim.url,
               "--api-key", "bench", "--concurrency", str(spec.concurrency)]  # fmt: skip
        if not spec.doc_meta:
            run.append("--no-doc-meta")
        if spec.fixed_concurrency:
            run.append("--fixed-concurrency")
        if spec.timeout is not None:
            run += ["--timeout", str(spec.timeout)]
        if spec.engine != "asyncio":
            run += ["--engine", spec.engine]
        prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
        sim_t0 = sim.reset()
        cpu0, busy0 = sim.cpu_seconds(), _busy_seconds()
        client = run_client(prefix + run, work / "client.err")
        cpu1, busy1 = sim.cpu_seconds(), _busy_seconds()
        st = sim.stats()
        # kept beside the run folder: the per-second timeline is what explains a slow run
        (work / "sim_stats.json").write_text(json.dumps({k: v for k, v in st.items() if k != "request_times"}))
        # read before a resume run overwrites it
        info = json.loads((out / "_run.json").read_text()) if (out / "_run.json").exists() else {}
        resume: ClientExit | None = None
        resume_requests = None
        if spec.resume_check:
            sim.reset()
            resume = run_client([sys.executable, *run], work / "resume.err")
            resume_requests = sim.stats()["requests"]
    return _Readings(client, st, info, sim_t0, (cpu0, cpu1), (busy0, busy1), resume, resume_requests)


def measure(spec: RunSpec, work: Path, *, profile: Path | None = None) -> RunResult:
    """Run ``spec`` once: fresh simulator, fresh manifest and output folder."""
    work.mkdir(parents=True, exist_ok=True)
    manifest, out = work / "manifest.parquet", work / "out"
    ensure_bytecode()
    r = _drive(spec, work, manifest, out, profile)
    c, st, info, resume = r.client, r.stats, r.info, r.resume
    (cpu0, cpu1), (busy0, busy1), wall, cpu = r.sim_cpu, r.busy, c.wall, c.cpu_s
    timings = info.get("timings", {})
    times: list[float] = st["request_times"]
    requests = st["requests"]
    throughput = _throughput(times, requests, spec.latency)
    ok = int(info.get("ok", 0))
    goodput = throughput * ok / requests if requests else 0.0
    final, lowest = _client_view(info)
    spawn_first = round(r.sim_t0 + times[0] - c.spawned, 3) if times and requests <= len(times) else None
    # over the client's wall time: the simulator keeps only the last 200 000 arrival times
    sim_share = (cpu1 - cpu0) / wall if cpu0 is not None and cpu1 is not None else None
    bound = spec.bound_rps
    # CPU that neither the client nor the simulator used: another job on the machine
    # skews every figure, so say so rather than report it as the client's
    foreign = None
    if busy0 is not None and busy1 is not None and sim_share is not None:
        foreign = max(0.0, (busy1 - busy0 - cpu - sim_share * wall) / wall)
    return RunResult(
        spec=spec,
        exit_code=c.code,
        requests=requests,
        ok=ok,
        failed=int(info.get("failed", 0)),
        wall_s=round(wall, 3),
        throughput_rps=round(throughput, 1),
        bound_rps=round(bound, 1),
        ratio=round(throughput / bound, 4),
        wall_ratio=round(requests / wall / bound, 4),
        cpu_s=round(cpu, 3),
        cpu_us_per_request=round(cpu / max(requests, 1) * 1e6, 1),
        client_cpu_share=round(cpu / wall, 3),
        peak_rss_mb=round(c.maxrss_kb / 1024, 1),
        first_request_s=timings.get("first_request_s"),
        spawn_to_first_request_s=spawn_first,
        compaction_s=timings.get("compaction_s"),
        first_request_cpu_s=timings.get("first_request_cpu_s"),
        interpreter_s=round(interpreter_seconds(work), 3),
        **_wall_parts(wall, spawn_first, timings),
        sim_max_in_flight=st["max_in_flight"],
        sim_cpu_share=round(sim_share, 3) if sim_share is not None else None,
        foreign_cpu_share=round(foreign, 3) if foreign is not None else None,
        resume_s=round(resume.wall, 3) if resume else None,
        resume_requests=r.resume_requests,
        resume_exit_code=resume.code if resume else None,
        stderr_tail=_tail(work / "client.err"),
        goodput_rps=round(goodput, 1),
        concurrency_final=final,
        limit_min=lowest,
        sim=sim_figures(spec, st),
        ideal_send_s=_ideal(spec, manifest),
    )


def _ideal(spec: RunSpec, manifest: Path) -> float | None:
    """The ideal client's send phase on this run's faults (pipeline/benchfloor.py); None
    for the runs it does not model (Ray, a capacity or RPM cap) or that are too long to
    replay in Python cheaply."""
    if spec.engine != "asyncio" or spec.capacity is not None or spec.rows > 100_000:
        return None
    from .benchfloor import ideal_send_s

    return round(ideal_send_s(spec, manifest), 3)


# --------------------------------------------------------------------------- scenarios

_LITTLE_100 = RunSpec(rows=10_000, latency=0.2, concurrency=100)
_FAULTS = RunSpec(rows=2000, latency=0.2, concurrency=100, fault_rate=0.1, timeout=5.0)
_MILLION = RunSpec(rows=1_000_000, latency=0.01, concurrency=512, resume_check=True)
# Issue 10: a third of the faults 429 with Retry-After: 1, each row failing at most twice,
# the client adaptive as a user runs it.
_UNKIND = RunSpec(rows=2000, latency=0.2, concurrency=100, fault_rate=0.1, fault_kinds=UNKIND_FAULTS,
                  timeout=5.0, fixed_concurrency=False, fault_attempts=2, retry_after_s=1.0)  # fmt: skip
# Fault-free, adaptive: start-up, end-to-end ratio and memory at 10 000 rows, and the
# clean run the random-429 one is compared with.
_CLEAN_10K = RunSpec(rows=10_000, latency=0.2, concurrency=100, fixed_concurrency=False)
# 5 % of every attempt's requests are 429s whatever the load.
_RANDOM_429 = replace(_CLEAN_10K, fault_rate=0.05, fault_kinds=RANDOM_429S, fault_attempts=EVERY_ATTEMPT,
                      retry_after_s=1.0)  # fmt: skip
# 30 s at the capacity's 200 answers/s: 20 s to judge after the warm-up.
_LITTLE_100 = RunSpec(rows=10_000, latency=0.2, concurrency=100)
_CAPACITY = RunSpec(rows=6000, latency=0.2, concurrency=200, capacity=40, fixed_concurrency=False)

#: The issue's targets. Each scenario names its runs; a run shared by several
#: scenarios (the 1M one, the clean 10k one) is measured once per bench invocation.
SCENARIOS: dict[str, dict[str, RunSpec]] = {
    "little-100": {"run": _LITTLE_100},
    "little-1000": {"run": RunSpec(rows=20_000, latency=1.0, concurrency=1000)},
    "faults": {"faults": _FAULTS, "clean": replace(_FAULTS, fault_rate=0.0)},
    "cpu": {"run": RunSpec(rows=50_000, latency=0.05, concurrency=256)},
    "memory": {"100k": replace(_MILLION, rows=100_000, resume_check=False), "1M": _MILLION},
    "resume": {"1M": _MILLION},
    "compaction": {"1M": _MILLION},
    # issue 10; "faults-fixed" is not judged: it tells the limiter's share of the cost from the pauses'
    "faults-unkind": {
        "faults": _UNKIND,
        "clean": replace(_UNKIND, fault_rate=0.0),
        "faults-fixed": replace(_UNKIND, fixed_concurrency=True),
    },
    "random-429": {"429s": _RANDOM_429, "clean": _CLEAN_10K},
    "capacity": {"run": _CAPACITY},
    "startup": {"run": _CLEAN_10K},
    "memory-10k": {"10k": _CLEAN_10K, "1M": _MILLION},
    # issue 12: little-100 with the documents' HEADs (the default) beside the same run without them
    "doc-meta": {"on": _LITTLE_100, "off": replace(_LITTLE_100, doc_meta=False)},
    # issue 13: the Ray engine (a local Ray started by the client, 4 sender actors) against the
    # asyncio engine, same rows; its start-up is spawn_to_first_request_s (Ray and the actors)
    "ray": {"asyncio": _LITTLE_100, "ray": replace(_LITTLE_100, engine="ray")},
}


def at_least(what: str, value: float | None, target: float, before: str = "") -> Check:
    """``value >= target``; a missing value fails."""
    v = float("-inf") if value is None else value
    return Check(what, v, f">= {target:g}", v >= target, before)


def at_most(what: str, value: float | None, target: float, before: str = "") -> Check:
    """``value <= target``; a missing value fails."""
    v = float("inf") if value is None else value
    return Check(what, v, f"<= {target:g}", v <= target, before)


def below(what: str, value: float | None, target: float, before: str = "") -> Check:
    """``value < target``; a missing value fails."""
    v = float("inf") if value is None else value
    return Check(what, v, f"< {target:g}", v < target, before)


def _sim(r: RunResult) -> SimFigures:
    """The simulator's figures of a measured run (a run without them cannot be judged)."""
    if r.sim is None:
        raise ValueError(f"run of {r.spec.rows} rows has no simulator figures")
    return r.sim


def _judge_faults(runs: dict[str, RunResult]) -> list[Check]:
    f, c = runs["faults"], runs["clean"]
    return [
        at_least("rows ok", f.ok, f.spec.rows),
        at_most("wall / clean wall", round(f.wall_s / c.wall_s, 3), 3.0),
    ]


def _judge_unkind(runs: dict[str, RunResult]) -> list[Check]:
    f, c = runs["faults"], runs["clean"]
    sim = _sim(f)
    checks = [
        at_most(
            "wall / clean wall",
            round(f.wall_s / c.wall_s, 3),
            2.5,
            "8.8x adaptive, 6.5x fixed (issue 10, another gateway)",
        ),
        at_least("rows ok", f.ok, f.spec.rows),
        at_most("wasted requests", sim.wasted, 0),
        at_most("Retry-After violations", sim.retry_after_violations, 0),
    ]
    if f.ideal_send_s is not None and c.ideal_send_s is not None:
        # the same ratio for a client with no overhead on these very faults (pipeline/benchfloor.py),
        # given the start-up and finish the clean run paid: what the dice alone cost
        ideal = round((f.ideal_send_s + c.wall_s - c.ideal_send_s) / c.wall_s, 3)
        checks.append(Check("ideal client's wall / clean wall, same faults", ideal, "(reported)", True))
    return checks


def _judge_random_429(runs: dict[str, RunResult]) -> list[Check]:
    f, c = runs["429s"], runs["clean"]
    ratio = round(f.goodput_rps / c.goodput_rps, 4) if c.goodput_rps else None
    return [
        at_least("goodput / clean goodput", ratio, 0.85, "limit 64 -> ~19 at 3 % random 429s (issue 10)"),
        at_least("rows ok", f.ok, f.spec.rows),
        at_most("Retry-After violations", _sim(f).retry_after_violations, 0),
    ]


def _judge_capacity(runs: dict[str, RunResult]) -> list[Check]:
    r = runs["run"]
    sim, cap = _sim(r), r.spec.capacity or 0
    return [
        below(f"429 share after {LATE_AFTER_S} s", sim.late_429_share, 0.05),
        # "in-flight near 40": a limit that fell far below the capacity would pass the share trivially
        at_least(f"mean in flight after {LATE_AFTER_S} s", sim.late_in_flight, 0.8 * cap),
    ]


def _judge_memory(runs: dict[str, RunResult]) -> list[Check]:
    small, big = runs["100k"], runs["1M"]
    return [
        at_most("peak RSS MB (100k)", small.peak_rss_mb, 300),
        at_most("peak RSS MB (1M)", big.peak_rss_mb, 300),
        at_most("RSS 1M / 100k", round(big.peak_rss_mb / small.peak_rss_mb, 3), 1.3),
    ]


def _on_off(runs: dict[str, RunResult]) -> float:
    return round(runs["on"].throughput_rps / max(runs["off"].throughput_rps, 1e-9), 4)


Judge = Callable[[dict[str, RunResult]], list[Check]]

#: How each scenario's runs are judged against its targets.
JUDGES: dict[str, Judge] = {
    "little-100": lambda runs: [at_least("ratio to bound", runs["run"].ratio, 0.95)],
    "ray": lambda runs: [
        at_least("ray / asyncio throughput", _share(runs["ray"], runs["asyncio"]), 0.8),
        # start-up, side by side: Ray's processes and actors against one process's imports
        Check(
            "ray first request s from spawn",
            _or_nan(runs["ray"].spawn_to_first_request_s),
            "",
            True,
            "63.5 s on a busy machine (issue 13)",
        ),
        Check("asyncio first request s from spawn", _or_nan(runs["asyncio"].spawn_to_first_request_s), "", True),
    ],
    "little-1000": lambda runs: [at_least("ratio to bound", runs["run"].ratio, 0.90)],
    "faults": _judge_faults,
    "cpu": lambda runs: [at_most("client CPU us/request", runs["run"].cpu_us_per_request, 200)],
    "memory": _judge_memory,
    "resume": lambda runs: [
        at_most("resume s", runs["1M"].resume_s, 5.0),
        at_most("resume requests", runs["1M"].resume_requests, 0),
    ],
    "compaction": lambda runs: [at_most("compaction s", runs["1M"].compaction_s, 15.0)],
    "faults-unkind": _judge_unkind,
    "random-429": _judge_random_429,
    "capacity": _judge_capacity,
    "startup": lambda runs: [
        at_least("end-to-end ratio to bound", runs["run"].wall_ratio, 0.95, "88.9 % (22.5 s, issue 10)"),
        at_most("first request s from spawn", runs["run"].spawn_to_first_request_s, 0.45, "0.56 s"),
    ],
    "doc-meta": lambda runs: [
        at_least("ratio to bound, doc metadata on", runs["on"].ratio, 0.95),
        at_least("throughput on / off", _on_off(runs), 0.95),
    ],
    "memory-10k": lambda runs: [
        at_most("peak RSS MB (10k)", runs["10k"].peak_rss_mb, 130, "204 MB"),
        at_most("peak RSS MB (1M)", runs["1M"].peak_rss_mb, 200, "281 MB"),
    ],
}


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _share(r: RunResult, base: RunResult) -> float:
    """``r``'s throughput as a share of ``base``'s."""
    return r.throughput_rps / base.throughput_rps if base.throughput_rps else 0.0


def _judge(name: str, runs: dict[str, RunResult]) -> list[Check]:
    judge = JUDGES.get(name)
    return judge(runs) if judge else []


#: Not a run: the HTML report of a synthetic 1 000 000-row folder (issue 14), see :func:`measure_report`.
REPORT_SCENARIO = "report-1m"
#: Not a run of SCENARIOS: a 1 000 000-row night that reuses everything (issue 12), see pipeline/benchreuse.py.
REUSE_SCENARIO = "reuse-1m"
#: Not a run: what structured answers add per row (issue 11), see :func:`measure_structured`.
STRUCTURED_SCENARIO = "structured-100k"
#: Not a run of SCENARIOS: issue 13's demonstration, s3:// to s3:// on Ray at --rpm 600 (pipeline/benchs3.py).
RAY_S3_SCENARIO = "ray-s3"
#: Not a run: where reuse-1m's memory goes, without its HEADs (index; a night with HEADs answered in-process),
#: see pipeline/reusemem.py.
REUSE_MEM_SCENARIO = "reuse-mem"
ALL_SCENARIOS = [*SCENARIOS, REPORT_SCENARIO, REUSE_SCENARIO, STRUCTURED_SCENARIO, RAY_S3_SCENARIO, REUSE_MEM_SCENARIO]
#: Left out of ``--scenario all``: ray-s3 paces 10 000 rows at 600 a minute (~17 min); name it to run it.
NOT_IN_ALL = (RAY_S3_SCENARIO, REUSE_MEM_SCENARIO)


def measure_report(work: Path, rows: int = 1_000_000, small: int = 10_000) -> ScenarioResult:
    """``docpipe report`` of a synthetic ``rows``-row folder in its own process: wall time
    (imports included), the page's size and the process's peak RSS, against the issue's
    10 s and 5 MB; and how much more RSS it takes than the same report of ``small`` rows
    (the report folds batches into fixed-size aggregates, so this should stay near 0;
    reading whole columns took 189 MB more at 1M)."""
    from .htmlreport import REPORT_FILE
    from .htmlreport.synthetic import write_synthetic

    done = {}
    for n in (small, rows):
        folder = write_synthetic(work / f"{REPORT_SCENARIO}-{n}", n)
        cmd = [sys.executable, "-m", "pipeline.cli", "report", str(folder), "--by", "category"]
        done[n] = (run_client(cmd, work / f"report-{n}.err"), folder / REPORT_FILE)
    big, page = done[rows]
    size_mb = page.stat().st_size / 1e6 if big.code == 0 and page.exists() else float("inf")
    rss, rss_small = big.maxrss_kb / 1024, done[small][0].maxrss_kb / 1024
    return ScenarioResult(REPORT_SCENARIO, {}, [
        Check(f"render s ({rows} rows)", round(big.wall, 2), "<= 10", big.wall <= 10.0, "3.4-3.6 s"),
        Check("_report.html MB", round(size_mb, 3), "<= 5", size_mb <= 5.0, "0.10 MB"),
        Check(f"peak RSS MB ({rows} rows)", round(rss, 1), "", True, "366 MB"),
        Check(f"peak RSS MB more than at {small} rows", round(rss - rss_small, 1), "<= 32", rss - rss_small <= 32,
              "+189 MB"),
    ])  # fmt: skip


def measure_structured(_work: Path, rows: int = 100_000) -> ScenarioResult:
    """Extraction, validation and column building per row (in this process: pure CPU work
    of the client, see :mod:`pipeline.structured.timing`) against the issue's 30 µs, and
    the same work done by jsonschema and row by row, measured beside it."""
    from .structured.timing import measure as overhead

    o = overhead(rows)
    return ScenarioResult(STRUCTURED_SCENARIO, {}, [
        at_most(f"check + columns us/row ({rows} invoice answers)", o.total_us, 30, "50-75 us"),
        Check("check us/row (find JSON, validate)", o.check_us, "", True, "28-36 us"),
        Check("columns us/row (at compaction)", o.columns_us, "", True, "24-33 us"),
        Check("x faster than jsonschema + row by row", round(o.straightforward_us / o.total_us, 1), "", True),
        Check("column paths agree", float(o.agree), "= 1", o.agree),
    ])  # fmt: skip


#: Scenarios that are not runs: measured by a function of the work folder.
def measure_reuse_mem(work: Path) -> ScenarioResult:
    from .reusemem import measure_reuse_memory

    return measure_reuse_memory(work / REUSE_MEM_SCENARIO)


MEASURES: dict[str, Any] = {REPORT_SCENARIO: measure_report, STRUCTURED_SCENARIO: measure_structured,
                            REUSE_MEM_SCENARIO: measure_reuse_mem}  # fmt: skip


def run_scenarios(names: list[str], work: Path, *, profile: Path | None = None,
                  echo: Any = None, ray_s3: RayS3Spec | None = None) -> list[ScenarioResult]:  # fmt: skip
    """Measure the named scenarios one after the other (the machine has few cores:
    two runs at once would measure each other). ``ray_s3``: the ray-s3 run's rows and limits."""
    done: dict[RunSpec, RunResult] = {}
    results = []
    for name in names:
        if name in MEASURES:
            if echo:
                echo(f"bench: {name} ...")
            results.append(MEASURES[name](work))
            continue
        if name == REUSE_SCENARIO:
            from .benchreuse import measure_reuse

            if echo:
                echo(f"bench: {name}: night 2 of 1000000 rows (250000 documents) reusing night 1; 100000 distinct")
            results.append(measure_reuse(work / name))
            continue
        if name == RAY_S3_SCENARIO:
            from .benchs3 import measure_ray_s3

            results.append(measure_ray_s3(work / name, ray_s3, echo=echo))
            continue
        runs = {}
        for label, spec in SCENARIOS[name].items():
            if spec not in done:
                if echo:
                    echo(f"bench: {name}/{label}: {spec.rows} rows, C={spec.concurrency}, L={spec.latency:g}s ...")
                done[spec] = measure(spec, work / f"{name}-{label}", profile=profile)
            runs[label] = done[spec]
        results.append(ScenarioResult(name, runs, _judge(name, runs)))
    return results


def run_custom(spec: RunSpec, work: Path, *, profile: Path | None = None) -> ScenarioResult:
    return ScenarioResult("custom", {"run": measure(spec, work / "custom", profile=profile)})


# --------------------------------------------------------------------------- reporting


def _gateway_part(r: RunResult) -> str:
    """What the simulator saw, when there is more to say than 'every request answered'."""
    sim, s = r.sim, r.spec
    if sim is None:
        return ""
    parts = [f"limit={r.concurrency_final} (min {r.limit_min})"] if not s.fixed_concurrency else []
    parts.append(f"sim_late={sim.sim_late_ms}ms")  # the simulator's own delay: latency no client can win back
    if r.ideal_send_s is not None and s.fault_rate:
        parts.append(f"ideal_send={r.ideal_send_s}s")  # an ideal client on the same faults (benchfloor)
    if sim.faults or sim.wasted:
        parts.append(f"faults={sim.faults} wasted={sim.wasted} dup_ok={sim.duplicate_ok}")
    if sim.retry_after_sent:
        parts.append(f"retry_after sent={sim.retry_after_sent} checked={sim.retry_after_checked} "
                     f"violated={sim.retry_after_violations} min_slack={sim.retry_after_min_slack_s}s")  # fmt: skip
    if sim.zero_request_seconds:
        parts.append(f"seconds_without_requests={sim.zero_request_seconds}")
    if s.capacity is not None or s.fault_rate:
        parts.append(f"after {LATE_AFTER_S}s: 429_share={sim.late_429_share} in_flight={sim.late_in_flight}")
    return " | " + " ".join(parts) if parts else ""


def run_line(label: str, r: RunResult) -> str:
    """One paste-able line per run: every figure."""
    s = r.spec
    faults = f" faults={s.fault_rate:g}" if s.fault_rate else ""
    faults += f" capacity={s.capacity}" if s.capacity is not None else ""
    faults += " fixed" if s.fixed_concurrency else " adaptive"
    resume = f" resume={r.resume_s}s/{r.resume_requests}req" if r.resume_s is not None else ""
    busy = " [MACHINE BUSY: figures skewed]" if (r.foreign_cpu_share or 0) > BUSY_SHARE else ""
    return (
        f"{label}: N={s.rows} C={s.concurrency} L={s.latency:g}s{faults} exit={r.exit_code} "
        f"ok={r.ok} requests={r.requests} wall={r.wall_s}s rate={r.throughput_rps}/s goodput={r.goodput_rps}/s "
        f"bound={r.bound_rps:g}/s ratio={r.ratio:.1%} (wall {r.wall_ratio:.1%}) "
        f"cpu={r.cpu_us_per_request}us/req ({r.client_cpu_share:.0%} of a core) rss={r.peak_rss_mb}MB "
        f"first_req={r.first_request_s}s (from spawn {r.spawn_to_first_request_s}s, cpu {r.first_request_cpu_s}s, "
        f"python alone {r.interpreter_s}s) compaction={r.compaction_s}s "
        f"wall: startup={r.startup_s}s finish={r.finish_s}s exit={r.exit_s}s "
        f"sim_cpu={r.sim_cpu_share} other_cpu={r.foreign_cpu_share}{resume}{busy}{_gateway_part(r)}"
    )


def scenario_line(res: ScenarioResult) -> str:
    """One paste-able line per scenario: its verdicts."""
    checks = "; ".join(
        f"{c.name}={c.value:g}"
        + (f" {c.target} {'PASS' if c.passed else 'FAIL'}" if c.target else "")  # no target: a figure to read
        + (f" [before: {c.before}]" if c.before else "")
        for c in res.checks
    )
    return f"bench {res.name}: {'PASS' if res.passed else 'FAIL'} ({checks})" if checks else f"bench {res.name}"


def to_json(results: list[ScenarioResult]) -> dict[str, Any]:
    scenarios = [
        {"name": r.name, "passed": r.passed, "checks": [asdict(c) for c in r.checks],
         "runs": {k: asdict(v) for k, v in r.runs.items()}}
        for r in results
    ]  # fmt: skip
    return {"machine": machine(), "scenarios": scenarios}


@contextlib.contextmanager
def work_dir(keep: str | None) -> Iterator[Path]:
    """A scratch folder for manifests and run directories; removed unless named."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield Path(keep)
        return
    with tempfile.TemporaryDirectory(prefix="docpipe-bench-") as tmp:
        yield Path(tmp)
