"""``docpipe bench --scenario reuse-mem``: where the memory of a night that reuses everything goes.

The reuse-1m scenario (:mod:`pipeline.benchreuse`) spends ~10 minutes on its
250 000 HEADs; its peak RSS is made by the reuse index, the copying of answers
forward and compaction, none of which needs the network. This measurement runs,
each in its own process (through the bench's launcher, for its own ``ru_maxrss``):

- ``index``: the :class:`~pipeline.reuse.ReuseIndex` of night 1's answers, built as
  a run builds it (:func:`pipeline.incremental.reuse_index`);
- ``night``: the real ``docpipe run --reuse NIGHT1`` (the command's own entry point),
  with each document's HEAD answered in the process from the simulator's
  :class:`~pipeline.simulator.files.Files` (what its ``/files`` would answer, no HTTP)
  and a gateway address nobody listens on (a chat request would fail its row).

A thread of the child samples ``VmRSS`` every 50 ms; the phases (index, run, compaction,
report) are marked by wrapping the runner's functions, and the child writes its timeline
and each phase's peak to ``<phase>.json``. Night 1 (:func:`pipeline.benchreuse.write_night`)
is written once per row count and kept in the work folder for the next try.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .bench import Check, ScenarioResult, at_most, run_client, write_manifest

#: The gateway address of the ``night`` child: nothing listens there, so a chat request fails.
_NOBODY = "http://127.0.0.1:9/v1"
_FILES = "http://127.0.0.1:9/files"


class Sampler:
    """VmRSS of this process every ``every`` seconds, and the peak of each marked phase."""

    def __init__(self, every: float = 0.05) -> None:
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self.phases: list[dict[str, Any]] = []
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((round(time.monotonic() - self.t0, 2), round(self.rss_mb(), 1)))

    def mark(self, name: str, start: bool) -> None:
        now = round(time.monotonic() - self.t0, 2)
        if start:
            self.phases.append({"phase": name, "start_s": now, "rss_start_mb": round(self.rss_mb(), 1)})
        else:
            phase = next(p for p in reversed(self.phases) if p["phase"] == name)
            phase.update(end_s=now, rss_end_mb=round(self.rss_mb(), 1))

    def wrap(self, name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.mark(name, True)
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(name, False)

        return wrapped

    def report(self, path: Path, **extra: Any) -> None:
        self._stop.set()
        self._thread.join()
        for p in self.phases:
            inside = [r for t, r in self.samples if p["start_s"] <= t <= p.get("end_s", 1e9)]
            p["peak_mb"] = max(inside, default=p["rss_start_mb"])
        step = max(1, len(self.samples) // 200)
        path.write_text(json.dumps({**extra, "phases": self.phases, "timeline": self.samples[::step]}, indent=1))


def _child_index(night1: Path, out: Path) -> None:
    from .config import load_config
    from .incremental import reuse_index

    sampler = Sampler()
    cfg = load_config(manifest=str(night1.parent / "manifest.parquet"), out=str(out), base_url=_NOBODY,
                      api_key="bench", reuse=[str(night1)])  # fmt: skip
    index = sampler.wrap("index", reuse_index)(cfg)
    sampler.report(out.parent / "index.json", answers=len(index))


def _child_night(night1: Path, out: Path) -> None:
    import pipeline.compaction
    import pipeline.runner

    from .cli import main
    from .docmeta import DocHeads, DocMeta
    from .incremental import Gate
    from .simulator.files import Files

    sampler = Sampler()
    files = Files()

    class LocalHeads(DocHeads):
        async def _fetch(self, url: str) -> DocMeta | None:
            self.counts["heads"] += 1
            tag, modified, size = files.meta(url.split("/files/", 1)[1])
            return DocMeta(f'"{tag}"', float(modified), size)

    def local_heads(cfg: Any) -> Any:
        return LocalHeads(timeout=cfg.head_timeout, concurrency=cfg.head_concurrency)

    pipeline.runner.doc_heads = local_heads  # type: ignore[attr-defined]
    pipeline.runner.reuse_index = sampler.wrap("index", pipeline.runner.reuse_index)  # type: ignore[attr-defined]
    # compact() and the runner's compaction begun early both end in Compactor.finish (the journal
    # pass of one begun early falls in the run's phase: it runs beside the last requests)
    finish = sampler.wrap("compaction", pipeline.compaction.Compactor.finish)
    pipeline.compaction.Compactor.finish = finish  # type: ignore[method-assign]
    pipeline.runner._write_report = sampler.wrap("report", pipeline.runner._write_report)
    close = Gate.close

    async def closed(self: Gate) -> None:
        await close(self)
        sampler.mark("run", False)

    Gate.close = closed  # type: ignore[method-assign]
    sampler.mark("run", True)
    args = ["run", str(night1.parent / "manifest.parquet"), "--out", str(out), "--base-url", _NOBODY,
            "--api-key", "bench", "--concurrency", "512", "--quiet", "--reuse", str(night1)]  # fmt: skip
    try:
        main(args, standalone_mode=False)
    finally:
        info = json.loads((out / "_run.json").read_text()) if (out / "_run.json").exists() else {}
        sampler.report(out.parent / "night.json", reused=info.get("reused"), requests=info.get("counts"))


def prepare(work: Path, rows: int, per_doc: int) -> Path:
    """Night 1's folder of ``rows`` rows (kept for the next try), beside its manifest."""
    from .benchreuse import write_night

    base = work / f"rows-{rows}"
    night1 = base / "night1"
    if not (base / "ready").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        write_manifest(base / "manifest.parquet", rows, files=_FILES, per_doc=per_doc)
        write_night(night1, base / "manifest.parquet", _NOBODY)
        (base / "ready").touch()
    return night1


def measure_reuse_memory(work: Path, rows: int = 1_000_000, per_doc: int = 4,
                         phases: tuple[str, ...] = ("index", "night")) -> ScenarioResult:  # fmt: skip
    """Each phase of the module docstring in its own process: peak RSS, CPU, phase peaks."""
    night1 = prepare(work, rows, per_doc)
    checks: list[Check] = []
    for phase in phases:
        out = night1.parent / f"out-{phase}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "pipeline.reusemem", phase, str(night1), str(out)]
        done = run_client(cmd, night1.parent / f"{phase}.err")
        found = json.loads((night1.parent / f"{phase}.json").read_text()) if done.code == 0 else {}
        checks.append(Check(f"{phase}: exit code", done.code, "== 0", done.code == 0))
        if phase == "night":
            checks.append(
                Check("night: rows reused", found.get("reused") or 0, f"== {rows}", found.get("reused") == rows)
            )
            checks.append(at_most("night: peak RSS MB", round(done.maxrss_kb / 1024, 1), 300))
        else:
            checks.append(Check(f"{phase}: peak RSS MB", round(done.maxrss_kb / 1024, 1), "(reported)", True))
        checks.append(Check(f"{phase}: client CPU s", round(done.cpu_s, 1), "(reported)", True))
        for p in found.get("phases", []):
            what = f"{phase}/{p['phase']}: peak RSS MB"
            checks.append(Check(what, p["peak_mb"], f"(start {p['rss_start_mb']}, end {p.get('rss_end_mb')})", True))
    return ScenarioResult("reuse-mem", {}, checks)


if __name__ == "__main__":
    {"index": _child_index, "night": _child_night}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
