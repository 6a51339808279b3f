"""The run as a library call: no side effects on the process, usable from async code and
notebooks, and a summary that says what is on disk whatever happened."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pipeline import run, run_async
from pipeline.report import format_summary

from .conftest import ROOT, TEST_KEY, cli, fast_config, make_rows, write_csv

_LIBRARY_CHECK = """
import asyncio, os, sys
{first}
# six's importer: python-dateutil < 3 (botocore pins it) imports six, which adds one, when pandas
# is first imported below; a third party's, not docpipe's
hooks = lambda: [h for h in sys.meta_path if type(h).__module__ != "six"]
before = (hooks(), os.umask(0o022), asyncio.get_event_loop_policy())
os.umask(before[1])
import pyarrow as pa
pool = pa.default_memory_pool().backend_name
from pipeline import run
s = run(manifest={manifest!r}, out={out!r}, base_url={url!r}, api_key={key!r}, progress="none")
assert s.exit_code == 0 and s.ok == 5, s
import pandas as pd
arr = pa.array(pd.Series([1, None, 3], dtype="Int64"))
assert arr.null_count == 1 and arr.type == pa.int64()
mask = os.umask(0o022); os.umask(mask)
assert (hooks(), mask, asyncio.get_event_loop_policy()) == before, "process state changed"
assert pa.default_memory_pool().backend_name == pool, "memory pool changed"
print("fine")
"""


@pytest.mark.parametrize("first", ["import pandas", "import pipeline"])
def test_a_library_run_changes_nothing_else_in_the_process(tmp_path: Path, sim, first: str) -> None:
    # issue 9: a run used to hide pandas from pyarrow with an import hook, breaking pa.array(Int64 series)
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    code = _LIBRARY_CHECK.format(first=first, manifest=str(manifest), out=str(tmp_path / "out"), url=server.url,
                                 key=TEST_KEY)  # fmt: skip
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "fine", r.stderr


def test_run_works_inside_a_running_event_loop(tmp_path: Path, sim) -> None:
    # issue 16 defect 9: a Jupyter cell has a running loop; run() must still work there
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(6))
    cfg = fast_config(manifest, tmp_path / "out", server)

    async def cell() -> int:
        return run(cfg).ok

    assert asyncio.run(cell()) == 6


def test_run_async_is_awaitable_from_async_code(tmp_path: Path, sim) -> None:
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(4))
    summary = asyncio.run(run_async(fast_config(manifest, tmp_path / "out", server)))
    assert (summary.exit_code, summary.ok) == (0, 4)


def test_when_results_cannot_be_written_the_summary_says_what_is_on_disk(tmp_path: Path, sim) -> None:
    # issue 16 defect 10: a failed compaction must not report "0 ok, all pending" nor name a missing file
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(20))
    out = tmp_path / "out"
    (out / "results.parquet").mkdir(parents=True)  # the rename onto it fails, like a full disk would
    summary = run(fast_config(manifest, out, server))
    assert (summary.exit_code, summary.ended, summary.ok, summary.pending) == (3, "aborted", 20, 0)
    assert summary.results_file is None and summary.journal_outcomes == 20
    assert summary.total_tokens == server.stats()["prompt_tokens"] + server.stats()["completion_tokens"]
    text = format_summary(summary)
    assert "not written" in text and "20 outcomes are safe" in text and "results.parquet\n" not in text
    info = json.loads((out / "_run.json").read_text())
    assert (info["ended"], info["exit_code"], info["ok"], info["results_file"]) == ("aborted", 3, 20, None)

    (out / "results.parquet").rmdir()
    again = run(fast_config(manifest, out, server))
    assert (again.exit_code, again.ok, again.requests) == (0, 20, 0)
    assert len(pd.read_parquet(out / "results.parquet")) == 20
    assert server.stats()["requests"] == 20


def test_the_library_refuses_a_run_without_a_key_as_the_cli_does(tmp_path: Path) -> None:
    from pipeline import UsageError

    manifest = write_csv(tmp_path / "m.csv", make_rows(2))
    with pytest.raises(UsageError, match="no API key"):
        run(manifest=str(manifest), out=str(tmp_path / "out"), base_url="https://gateway.invalid/v1",
            progress="none")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_the_run_path_never_imports_pandas(tmp_path: Path, sim) -> None:
    # pa.array()/pa.scalar()/read_table()/to_numpy() import pandas (+45 MB) behind our back; the
    # run builds its arrays from buffers instead (pipeline/arrowutil.py), and so does the report
    # every run ends with (pipeline/htmlreport/arrow.py).
    server = sim()
    manifest = write_csv(tmp_path / "m.csv", make_rows(30))
    code = f"""
import sys
import pipeline.runner as runner
s = runner.run(manifest={str(manifest)!r}, out={str(tmp_path / "out")!r}, base_url={server.url!r},
               api_key={TEST_KEY!r}, progress="none")
again = runner.run(manifest={str(manifest)!r}, out={str(tmp_path / "out")!r}, base_url={server.url!r},
                   api_key={TEST_KEY!r}, progress="none", retry_failed=True)
assert (s.ok, again.ok) == (30, 30), (s, again)
import pathlib
assert (pathlib.Path({str(tmp_path / "out")!r}) / "_report.html").exists()
print("pandas" in sys.modules)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


#: docpipe's modules a `docpipe run` of a plain manifest may have imported when its first request
#: goes out (issue 10: first request <= 0.45 s from spawn). A module added here is start-up time.
FIRST_REQUEST_MODULES = {
    "pipeline", "pipeline.arrowutil", "pipeline.budget", "pipeline.cli", "pipeline.client", "pipeline.config",
    "pipeline.control", "pipeline.dedupe", "pipeline.docmeta", "pipeline.embed", "pipeline.errors",
    "pipeline.fallback", "pipeline.forms", "pipeline.headwire", "pipeline.idset", "pipeline.incremental",
    "pipeline.journal",
    "pipeline.limits", "pipeline.manifest", "pipeline.memory", "pipeline.models", "pipeline.pool", "pipeline.presign",
    "pipeline.records", "pipeline.report", "pipeline.retry", "pipeline.reuse", "pipeline.rundir", "pipeline.runner",
    "pipeline.runrecord", "pipeline.schema", "pipeline.sender", "pipeline.signedurl", "pipeline.storage",
    "pipeline.structured", "pipeline.structured.ask", "pipeline.structured.extract", "pipeline.structured.fastcheck",
    "pipeline.structured.spec", "pipeline.tokens",
}  # fmt: skip
#: Never before the first request: the end of the run (compaction, report), other commands, extras.
NOT_BEFORE_FIRST_REQUEST = ("pandas", "pyarrow.compute", "pyarrow.dataset", "jsonschema", "tqdm", "ray", "boto3",
                            "tomllib", "importlib.metadata", "pipeline.compaction", "pipeline.htmlreport",
                            "pipeline.summary", "pipeline.staging", "pipeline.objstore")  # fmt: skip


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_cli_run_imports_little_before_its_first_request(tmp_path: Path, sim, kind: str) -> None:
    # sys.modules at the first request of a real `docpipe run` (CLI, subprocess), not a time
    server = sim()
    rows = make_rows(30)
    manifest = tmp_path / f"m.{kind}"
    if kind == "csv":
        write_csv(manifest, rows)
    else:
        pd.DataFrame(rows).to_parquet(manifest)
    args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url, "--api-key", TEST_KEY,
            "--quiet"]  # fmt: skip
    code = f"""
import json, sys
import pipeline.runrecord as rr
seen = []
sent = rr.RunRecord.request_sent
def first(self):
    seen.append(seen or sorted(sys.modules))
    sent(self)
rr.RunRecord.request_sent = first
from pipeline.cli import main
try:
    main({args!r})
except SystemExit as e:
    print(json.dumps([e.code, seen[0], sorted(sys.modules)]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    exit_code, before, at_exit = json.loads(r.stdout.strip().splitlines()[-1])
    assert exit_code == 0
    ours = {m for m in before if m == "pipeline" or m.startswith("pipeline.")}
    assert ours - {"pipeline.__main__"} <= FIRST_REQUEST_MODULES, sorted(ours - FIRST_REQUEST_MODULES)
    assert [m for m in NOT_BEFORE_FIRST_REQUEST if m in before] == []
    # the end of the run got them (imported early in a thread, or at the end)
    assert {"pipeline.compaction", "pipeline.htmlreport"} <= set(at_exit)


def test_a_cli_run_prints_its_report_without_pandas(tmp_path: Path, sim) -> None:
    # `docpipe run` as users run it (no --quiet, stdout a pipe): the report it prints at its end is
    # `docpipe summary OUT`'s, line for line, and pandas (+45 MB, 0.35 s) is never imported for it
    server = sim(latency_s=0.01, fault_rate=0.3, fault_kinds=("500", "429"), retry_after_s=None)
    rows = make_rows(40)
    rows[3]["question"] = "[[sim:status=400]] rejected"
    manifest = write_csv(tmp_path / "m.csv", rows)
    out = str(tmp_path / "out")
    job = tmp_path / "job.toml"
    job.write_text("[retry]\nbackoff_initial = 0\nbackoff_max = 0\n")  # retries without sleeping
    args = ["run", str(manifest), "--job", str(job), "--out", out, "--base-url", server.url, "--api-key", TEST_KEY,
            "--no-doc-meta"]  # fmt: skip
    code = f"""
import json, sys
from pipeline.cli import main
try:
    main({args!r})
except SystemExit as e:
    print(json.dumps([e.code, sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'pipeline'))]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    *printed, last = r.stdout.strip().splitlines()
    exit_code, modules = json.loads(last)
    assert exit_code == 1  # one row rejected
    assert [m for m in modules if m.split(".")[0] == "pandas"] == []
    assert "pipeline.summary" not in modules and "pipeline.htmlreport.tally" in modules
    run_part, report = "\n".join(printed).split("\n\n")
    assert run_part.splitlines()[1].startswith("rows: 40 total, 39 ok, 1 failed, 0 pending (40 answered this run")
    summary = cli("summary", out)
    assert summary.returncode == 0, summary.stderr
    assert report == summary.stdout.strip()
    assert report.startswith(f"40 rows in {out}: 39 ok, 1 failed") and "attempts per row: 1 -> " in report


def test_importing_the_package_and_the_cli_leaves_the_run_engine_for_later() -> None:
    # `import pipeline` names run, load_config and the errors without importing them (PEP 562), so
    # `docpipe summary` or `--help` never load aiohttp and `docpipe run` can import aiohttp in a
    # thread while its main thread imports pyarrow (issue 10)
    engine = ["aiohttp", "pyarrow", "numpy", "pipeline.runner", "pipeline.client"]
    code = f"""
import json, sys
import pipeline, pipeline.cli
before = [m for m in {engine!r} if m in sys.modules]
from pipeline import DocpipeError, JobConfig, RunSummary, UsageError, load_config, run, run_async
missing = sorted(set(pipeline.__all__) - set(dir(pipeline)))
print(json.dumps([before, run.__module__, issubclass(UsageError, DocpipeError), missing]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [[], "pipeline.runner", True, []]
    r = subprocess.run([sys.executable, "-c", "import pipeline; pipeline.nothing"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)  # fmt: skip
    assert r.returncode == 1 and "AttributeError: module 'pipeline' has no attribute 'nothing'" in r.stderr


def test_importing_the_cli_and_runner_leaves_the_heavy_modules_for_later() -> None:
    # the first request waits for these imports (issue 10: first request <= 0.45 s after start);
    # each of these costs 0.05-0.7 s and is needed only at the end of a run or by other commands
    heavy = ("pandas", "pyarrow.compute", "pyarrow.dataset", "jsonschema", "pipeline.compaction", "pipeline.summary")
    code = f"import sys, pipeline.cli, pipeline.runner; print([m for m in {heavy!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
