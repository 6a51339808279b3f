"""``docpipe bench --scenario reuse-1m``: a night that reuses everything (issue 12).

Night 1 is written directly as a folded journal (one Parquet part): what a
finished night leaves, with the answers, the reuse keys and the document
metadata the simulator's ``/files`` serves, so the scenario does not spend
minutes asking a million questions first. Night 2 is the real ``docpipe run
--reuse NIGHT1`` in its own process (through the bench's launcher, for its own
CPU and peak RSS), against the simulator in its own process, which serves the
documents the client HEADs and counts the chat requests (there must be none).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .bench import Check, RunSpec, ScenarioResult, at_most, run_client, simulator, write_manifest
from .config import load_config
from .manifest import Manifest
from .schema import JOURNAL_SCHEMA
from .simulator.files import Files
from .storage import JOURNAL_DIR

_SPEC = RunSpec(rows=1_000_000, latency=0.01, concurrency=512)


def write_night(folder: Path, manifest: Path, base_url: str) -> int:
    """Night 1 of ``manifest`` as a folded journal: every row ok, asked an hour ago, with the
    metadata the simulator serves for its document today. Returns the rows written."""
    cfg = load_config(manifest=str(manifest), out=str(folder), base_url=base_url, api_key="bench")
    files = Files()
    journal = folder / JOURNAL_DIR
    journal.mkdir(parents=True, exist_ok=True)
    asked = int((time.time() - 3600) * 1e6)
    rows = 0
    with pq.ParquetWriter(journal / "part-000000001.parquet", JOURNAL_SCHEMA, compression="zstd") as writer:
        for batch in Manifest(str(manifest), cfg).rows():
            cols: dict[str, list[object]] = {n: [] for n in ("request_id", "row_index", "answer", "doc_etag",
                                                            "doc_last_modified", "doc_bytes", "reuse_key")}  # fmt: skip
            for row in batch:
                tag, modified, size = files.meta(row.file_url.split("/files/", 1)[1])
                for name, value in (("request_id", row.request_id), ("row_index", row.index),
                                    ("answer", f"night-1 answer {row.index}"), ("doc_etag", f'"{tag}"'),
                                    ("doc_last_modified", modified * 1_000_000), ("doc_bytes", size),
                                    ("reuse_key", row.reuse_key)):  # fmt: skip
                    cols[name].append(value)
            n = len(batch)
            same = {"model": cfg.model, "response_model": cfg.model, "finish_reason": "stop", "prompt_tokens": 20,
                    "completion_tokens": 30, "total_tokens": 50, "usage_estimated": False, "status": "ok",
                    "http_status": 200, "attempts": 1, "latency_ms": 10.0, "started_at": asked,
                    "completed_at": asked, "run_id": "night-1", "cost_usd": 0.0004}  # fmt: skip
            arrays = [pa.array(cols[f.name], f.type) if f.name in cols
                      else pa.array([same.get(f.name)] * n, f.type) for f in JOURNAL_SCHEMA]  # fmt: skip
            writer.write_table(pa.Table.from_arrays(arrays, schema=JOURNAL_SCHEMA))
            rows += n
    return rows


def measure_reuse(work: Path, rows: int = _SPEC.rows) -> ScenarioResult:
    """Night 2 of ``rows`` rows, every document unchanged: wall time, peak RSS, chat requests, HEADs."""
    work.mkdir(parents=True, exist_ok=True)
    manifest, night1, night2 = work / "manifest.parquet", work / "night1", work / "night2"
    with simulator(_SPEC, work / "sim.log") as sim:
        write_manifest(manifest, rows, files=sim.root + "/files")
        written = write_night(night1, manifest, sim.url)
        sim.reset()
        cmd = [sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--out", str(night2), "--base-url",
               sim.url, "--api-key", "bench", "--concurrency", str(_SPEC.concurrency), "--quiet", "--reuse",
               str(night1)]  # fmt: skip
        done = run_client(cmd, work / "client.err")
        requests = int(sim.stats()["requests"])
        heads = int(sim._call("/_sim/files")["heads"])
    info = json.loads((night2 / "_run.json").read_text()) if (night2 / "_run.json").exists() else {}
    reused, rss = int(info.get("reused", 0)), round(done.maxrss_kb / 1024, 1)
    return ScenarioResult("reuse-1m", {}, [
        Check(f"exit code (night 1: {written} rows)", done.code, "== 0", done.code == 0),
        at_most("chat requests", requests, 0),
        Check("rows reused", reused, f"== {rows}", reused == rows),
        Check("document HEADs", heads, f"== {rows}", heads == rows),
        at_most("peak RSS MB", rss, 300),
        Check("wall s (spawn to exit)", round(done.wall, 1), "(reported)", True),
        Check("client CPU s", round(done.cpu_s, 1), "(reported)", True),
        Check("compaction s", info.get("timings", {}).get("compaction_s") or 0.0, "(reported)", True),
    ])  # fmt: skip
