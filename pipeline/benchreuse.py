"""``docpipe bench --scenario reuse-1m``: a night that reuses everything (issue 12).

The manifest is 1 000 000 rows over 250 000 documents, four questions each on
consecutive rows (a nightly manifest asks several questions about each document; one
HEAD serves every row of a URL), so night 2 sends 250 000 HEADs. A second night of
100 000 rows, each about its own document, measures what one HEAD costs (HEADs/s,
client and simulator CPU per HEAD) in the same invocation, so a million distinct
documents can be extrapolated from it.

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
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from .bench import Check, ClientExit, RunSpec, ScenarioResult, Simulator, at_most, run_client, simulator, write_manifest
from .config import load_config
from .manifest import Manifest
from .schema import JOURNAL_SCHEMA
from .simulator.files import Files
from .storage import JOURNAL_DIR, ROW_GROUP_ROWS

_SPEC = RunSpec(rows=1_000_000, latency=0.01, concurrency=512)
#: Questions per document: a nightly manifest asks several about each (one HEAD serves them all).
PER_DOC = 4
#: Rows of the second, all-distinct night (a document each), for the cost of one HEAD.
DISTINCT_ROWS = 100_000


def write_night(folder: Path, manifest: Path, base_url: str) -> int:
    """Night 1 of ``manifest`` as a folded journal: every row ok, asked an hour ago, with the
    metadata the simulator serves for its document today. Returns the rows written."""
    cfg = load_config(manifest=str(manifest), out=str(folder), base_url=base_url, api_key="bench")
    files = Files()
    journal = folder / JOURNAL_DIR
    journal.mkdir(parents=True, exist_ok=True)
    asked = int((time.time() - 3600) * 1e6)
    rows = 0
    pending: list[pa.Table] = []
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
            pending.append(pa.Table.from_arrays(arrays, schema=JOURNAL_SCHEMA))
            rows += n
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:  # row groups as compaction folds them
                writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                pending = []
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
    return rows


class Night2(NamedTuple):
    rows: int
    written: int  # night 1's rows
    done: ClientExit
    requests: int  # chat requests the simulator counted
    heads: int  # HEADs the simulator counted
    sim_cpu_s: float
    info: dict[str, Any]  # night 2's _run.json


def night2(sim: Simulator, work: Path, rows: int, per_doc: int) -> Night2:
    """Night 1 of ``rows`` rows (``per_doc`` questions per document) written as a journal, then
    night 2 with ``--reuse`` as its own process against ``sim``; every document unchanged."""
    work.mkdir(parents=True, exist_ok=True)
    manifest, night1, out = work / "manifest.parquet", work / "night1", work / "night2"
    write_manifest(manifest, rows, files=sim.root + "/files", per_doc=per_doc)
    written = write_night(night1, manifest, sim.url)
    sim.reset()
    sim._call("/_sim/files", "POST", {"reset": True})
    cpu0 = sim.cpu_seconds() or 0.0
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(manifest), "--out", str(out), "--base-url",
           sim.url, "--api-key", "bench", "--concurrency", str(_SPEC.concurrency), "--quiet", "--reuse",
           str(night1)]  # fmt: skip
    done = run_client(cmd, work / "client.err")
    sim_cpu = (sim.cpu_seconds() or 0.0) - cpu0
    info = json.loads((out / "_run.json").read_text()) if (out / "_run.json").exists() else {}
    return Night2(rows, written, done, int(sim.stats()["requests"]), int(sim._call("/_sim/files")["heads"]),
                  sim_cpu, info)  # fmt: skip


def measure_reuse(work: Path, rows: int = _SPEC.rows, per_doc: int = PER_DOC,
                  distinct: int = DISTINCT_ROWS) -> ScenarioResult:  # fmt: skip
    """Night 2 of ``rows`` rows over ``rows // per_doc`` documents, every one unchanged: wall
    time, peak RSS, chat requests, HEADs; then a night of ``distinct`` rows, each with its own
    document, for the cost of one HEAD (rate, client and simulator CPU) in the same invocation."""
    work.mkdir(parents=True, exist_ok=True)
    with simulator(_SPEC, work / "sim.log") as sim:
        big = night2(sim, work / "night", rows, per_doc)
        one = night2(sim, work / "distinct", distinct, 1) if distinct else None
    docs = -(-rows // per_doc)
    checks = [
        Check(f"exit code (night 1: {big.written} rows, {per_doc} questions per document)", big.done.code, "== 0",
              big.done.code == 0),
        at_most("chat requests", big.requests, 0),
        Check("rows reused", int(big.info.get("reused", 0)), f"== {rows}", big.info.get("reused") == rows),
        Check("document HEADs (one per document)", big.heads, f"== {docs}", big.heads == docs),
        at_most("peak RSS MB", round(big.done.maxrss_kb / 1024, 1), 300),
        Check("wall s (spawn to exit)", round(big.done.wall, 1), "(reported)", True),
        Check("client CPU s", round(big.done.cpu_s, 1), "(reported)", True),
        Check("client CPU us a row", round(big.done.cpu_s / rows * 1e6), "(reported)", True),
        Check("HEADs/s (wall)", round(big.heads / big.done.wall), "(reported)", True),
        Check("compaction s", big.info.get("timings", {}).get("compaction_s") or 0.0, "(reported)", True),
    ]  # fmt: skip
    if one is not None:
        ok = one.done.code == 0 and one.requests == 0 and one.heads == distinct
        checks += [
            Check(f"all distinct ({distinct} rows, a document each): 0 requests, a HEAD a row", float(ok), "= 1", ok),
            Check("  HEADs/s (wall)", round(one.heads / one.done.wall), "(reported)", True),
            Check("  client CPU us a HEAD (its row's reuse included)", round(one.done.cpu_s / distinct * 1e6),
                  "(reported)", True),
            Check("  simulator CPU us a HEAD", round(one.sim_cpu_s / distinct * 1e6), "(reported)", True),
            Check(f"  peak RSS MB ({distinct} rows)", round(one.done.maxrss_kb / 1024, 1), "(reported)", True),
        ]  # fmt: skip
    return ScenarioResult("reuse-1m", {}, checks)
