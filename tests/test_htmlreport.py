"""The run report (issue 14): real runs against the simulator, the page opened in a real headless Chromium.

The browser is Debian's ``chromium``, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no network), so the test sees what the
browser sees: the DOM after parsing, every request the page makes, every console
message and CSP violation.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import run
from pipeline.htmlreport import REPORT_FILE, build, render_report, write_report
from pipeline.htmlreport.charts import Axis, Bars, Line, Marker, bar_list, xy_chart
from pipeline.htmlreport.fmt import ticks
from pipeline.htmlreport.page import CSP
from pipeline.htmlreport.quantiles import percentiles
from pipeline.htmlreport.scan import Scan
from pipeline.htmlreport.synthetic import write_synthetic
from pipeline.htmlreport.timeline import time_charts
from pipeline.summary import diff, merge, summarize

from .conftest import TEST_KEY, cli, fast_config, make_rows, write_csv

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)"
)
PRICES = {"price_prompt_per_1m": 2.5, "price_completion_per_1m": 10.0}
CHARTS = {"throughput", "in_flight", "failures", "latency", "attempts", "errors", "groups"}


# ----------------------------------------------------------------------------- a headless Chromium


class Browser:
    """Chromium over the DevTools protocol on fds 3/4 (JSON messages ended by NUL)."""

    def __init__(self, exe: str) -> None:
        to_r, self._w = os.pipe()
        self._r, from_w = os.pipe()
        # fds >= 5, so that placing them on 3 and 4 in the child cannot overwrite each other
        a, b = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 5), fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 5)
        os.close(to_r)
        os.close(from_w)
        self.profile = tempfile.mkdtemp(prefix="docpipe-chromium-")
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            f"--user-data-dir={self.profile}",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-component-update",
            "--disable-default-apps",
            "--no-default-browser-check",
            "about:blank",
        ]
        place = "import os, sys; a = sys.argv; os.dup2(int(a[1]), 3); os.dup2(int(a[2]), 4); os.execvp(a[3], a[3:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", place, str(a), str(b), exe, *flags],
            pass_fds=(a, b),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(a)
        os.close(b)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            m = self._next(deadline)
            if m.get("id") == self._id:
                assert "error" not in m, f"{method}: {m['error']}"
                return m["result"]
            self.events.append(m)

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, "chromium did not answer within 30 s"
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 16)
                assert chunk, "chromium closed the DevTools pipe"
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return dict(json.loads(raw))

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + 30
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._next(deadline))

    def open(self, path: Path) -> tuple[str, Any]:
        """Load ``path``; (session, evaluate) for the loaded page."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired")

        def evaluate(expression: str) -> Any:
            r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            assert "exceptionDetails" not in r, r
            return r["result"].get("value")

        evaluate("0")  # a round trip: events the load caused have arrived
        return session, evaluate

    def problems(self) -> list[str]:
        """Console messages, uncaught exceptions, log entries (CSP violations among them)."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(f"console.{p.get('type')}: {p.get('args')}")
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif e.get("method") == "Log.entryAdded":
                out.append(f"log {p['entry'].get('level')}: {p['entry'].get('text')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.proc.wait(10)
        except (AssertionError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._w)
            os.close(self._r)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser() -> Any:
    assert CHROMIUM is not None
    b = Browser(CHROMIUM)
    yield b
    b.close()


#: Every drawn mark of every chart, with a visible size; every URL-bearing attribute; the figures.
PAGE_FACTS = """JSON.stringify({
  charts: Object.fromEntries([...document.querySelectorAll('svg.chart')].map(s => [s.dataset.chart,
    [...s.querySelectorAll('.mark')].filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; })
      .length])),
  links: [...document.querySelectorAll('[src],[href],[action],[srcset],[poster],[data]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href') || e.outerHTML.slice(0, 80)),
  csp: document.querySelector('meta[http-equiv="Content-Security-Policy"]')?.content,
  figures: Object.fromEntries([...document.querySelectorAll('[data-figure]')].map(e =>
    [e.dataset.figure, {value: e.dataset.value, shown: e.querySelector('b')?.textContent}])),
  ended: document.querySelector('.verdict')?.dataset.ended,
  width: document.documentElement.scrollWidth,
})"""


# ----------------------------------------------------------------------------- runs


def _manifest(tmp_path: Path, n: int = 40, **questions: str) -> Path:
    rows = [
        {"id": f"r{i}", **r, "category": ("invoice", "contract", "report")[i % 3]} for i, r in enumerate(make_rows(n))
    ]
    for rid, q in questions.items():
        next(r for r in rows if r["id"] == rid)["question"] = q
    rows[11]["file_url"] = "not a url"  # invalid_input: fails without a request
    return write_csv(tmp_path / "m.csv", rows)


@pytest.fixture
def night(tmp_path: Path, sim: Any) -> Path:
    """A real run with retries (500s, 429s, truncated bodies on first attempts) and failed rows."""
    manifest = _manifest(tmp_path, r3="[[sim:status=400]] rejected", r7="[[sim:status=400]] rejected too")
    server = sim(
        latency_s=0.01, latency_jitter=0.9, fault_rate=0.4, fault_kinds=("500", "429", "truncated"), retry_after_s=None
    )
    out = tmp_path / "night"
    summary = run(fast_config(manifest, out, server, **PRICES))
    assert summary.exit_code == 1 and summary.failed == 3
    return out


def _figures_match_summary(figures: dict[str, Any], out: Path) -> None:
    """The page's verdict figures are `docpipe summary --json`'s."""
    proc = cli("summary", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    value = {k: v["value"] for k, v in figures.items()}
    assert int(value["rows"]) == s["rows"]
    assert int(value["ok"]) == s["status"].get("ok", 0)
    assert int(value["failed"]) == s["failed_rows"]
    for k in ("prompt", "completion", "total"):
        assert int(value[f"{k}_tokens"]) == s["tokens"][k]
    assert float(value["cost_usd"]) == pytest.approx(s["cost_usd"], rel=1e-12)
    for q in ("p50", "p95", "p99"):
        assert float(value[q]) == pytest.approx(s["latency_ms"][q], rel=1e-12)
    assert float(value["rows_per_s"]) == pytest.approx(s["throughput"]["rows_per_s"], rel=1e-12)
    assert float(value["elapsed_s"]) == pytest.approx(s["throughput"]["elapsed_s"], rel=1e-12)
    # and what a person reads is the same number
    assert figures["ok"]["shown"] == f"{s['status']['ok']:,}"
    assert figures["failed"]["shown"] == f"{s['failed_rows']:,}"


# ----------------------------------------------------------------------------- the page in a browser


@needs_chromium
def test_report_of_a_run_with_failures_draws_every_chart_in_chromium(night: Path, browser: Browser) -> None:
    page = write_report(night, by="category")
    assert page == night / REPORT_FILE
    _session, evaluate = browser.open(page)
    facts = json.loads(evaluate(PAGE_FACTS))
    assert set(facts["charts"]) == CHARTS, facts["charts"]
    assert all(n > 0 for n in facts["charts"].values()), facts["charts"]
    assert facts["csp"] == CSP
    assert facts["links"] == [], "the page must not reference anything"
    assert browser.problems() == []
    assert browser.requests() == [page.resolve().as_uri()], "nothing but the page itself is loaded"
    assert facts["ended"] == "completed_with_failures"
    assert facts["width"] <= 1280, "no horizontal scrolling at a laptop's width"
    _figures_match_summary(facts["figures"], night)


@needs_chromium
def test_the_browser_check_sees_console_errors_and_requests(tmp_path: Path, browser: Browser) -> None:
    """The checks above are not vacuous: a page that fetches and scripts is caught (only 127.0.0.1:9 is named)."""
    bad = tmp_path / "bad.html"
    head = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    body = '<img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>'
    bad.write_text(f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>")
    _session, evaluate = browser.open(bad)
    facts = json.loads(evaluate(PAGE_FACTS))
    assert facts["links"] == ["http://127.0.0.1:9/x.png"]
    problems = browser.problems()
    assert any("Content Security Policy" in p and "img-src" in p for p in problems), problems
    assert any("inline script" in p for p in problems), problems
    assert not any("boom" in p for p in problems), "the CSP kept the script from running"


@needs_chromium
def test_report_of_an_aborted_run_shows_pending_rows(tmp_path: Path, sim: Any, browser: Browser) -> None:
    server = sim(api_key="sk-the-right-one", latency_s=0.02)
    manifest = write_csv(tmp_path / "m.csv", make_rows(30))
    out = tmp_path / "out"
    summary = run(fast_config(manifest, out, server, api_key="sk-wrong-key-999"))
    assert summary.exit_code == 3
    page = write_report(out)
    _session, evaluate = browser.open(page)
    facts = json.loads(evaluate(PAGE_FACTS))
    assert facts["ended"] == "aborted"
    assert int(facts["figures"]["pending"]["value"]) == summary.pending == 30
    assert browser.problems() == []
    assert "Run the same command again to resume" in page.read_text()
    assert "sk-wrong-key-999" not in page.read_text()


# ----------------------------------------------------------------------------- the command


class _Figures(HTMLParser):
    """data-figure -> data-value of a page, read the way a browser would tokenise it."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-figure"):
            self.values[str(a["data-figure"])] = a.get("data-value") or ""


def _page_figures(text: str) -> dict[str, str]:
    parser = _Figures()
    parser.feed(text)
    return parser.values


def test_report_command_compares_two_nights_as_diff_does(tmp_path: Path, sim: Any) -> None:
    server = sim(latency_s=0.01)
    first = tmp_path / "monday"
    run(fast_config(_manifest(tmp_path), first, server, **PRICES))
    second = tmp_path / "tuesday"
    manifest = _manifest(tmp_path, 42, r1="What changed overnight?", r5="[[sim:status=400]] now rejected")
    run(fast_config(manifest, second, server, **PRICES))
    target = tmp_path / "mail" / "night.html"
    written_by_the_run = (second / REPORT_FILE).read_bytes()  # every run writes OUT/_report.html
    proc = cli("report", str(second), str(first), "--by", "category", "--html", str(target))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target) and (second / REPORT_FILE).read_bytes() == written_by_the_run
    figures = _page_figures(target.read_text())
    d = diff(first, second).to_dict()
    assert (
        (int(figures["diff_changed"]), int(figures["diff_new"]), int(figures["diff_gone"]))
        == (d["changed"], d["new"], d["gone"])
        == (2, 2, 0)
    )
    assert int(figures["diff_unchanged"]) == d["unchanged"]
    assert int(figures["diff_tokens"]) == d["tokens"]["total"]["delta"]
    assert float(figures["diff_cost_usd"]) == pytest.approx(d["cost_usd"]["delta"], rel=1e-9)
    assert float(figures["diff_failure_rate"]) == pytest.approx(d["failure_rate"]["delta"], rel=1e-12)
    assert "ok-&gt;failed 1" in target.read_text()  # status changes, as diff counts them
    assert "What changed overnight?" in target.read_text()  # an example, with its question
    assert d["status_changes"] == {"ok->failed": 1}


def test_report_command_names_a_missing_column_and_exits_2(night: Path) -> None:
    written_by_the_run = (night / REPORT_FILE).read_bytes()
    proc = cli("report", str(night), "--by", "departement")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'departement'" in lines[0] and "category" in lines[0], proc.stderr
    assert (night / REPORT_FILE).read_bytes() == written_by_the_run  # left as the run wrote it


def test_report_of_a_folder_that_is_not_an_output_folder_is_exit_2(tmp_path: Path) -> None:
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_report_is_made_from_the_journal_when_results_are_missing(night: Path) -> None:
    (night / "results.parquet").unlink()  # a run whose compaction failed: the journal holds the outcomes
    figures = _page_figures(render_report(night))
    s = summarize([night]).to_dict()
    assert int(figures["rows"]) == s["rows"] and int(figures["failed"]) == s["failed_rows"]
    assert float(figures["p95"]) == pytest.approx(s["latency_ms"]["p95"], rel=1e-12)


def test_report_of_a_merged_folder_draws_from_the_rows_alone(night: Path, tmp_path: Path) -> None:
    merged = tmp_path / "merged"
    merge([night], merged)  # _run.json without a timeline
    data = build(merged)
    assert data.time.estimated and data.time.errors is None and data.time.limit is None
    assert sum(data.time.ok_per_s) * data.time.bin_s == pytest.approx(data.verdict.ok)
    page = render_report(merged)
    assert 'data-chart="throughput"' in page and 'data-chart="in_flight"' in page
    assert "No timeline in _run.json" in page


# ----------------------------------------------------------------------------- a large folder


def test_figures_of_a_large_folder_equal_pandas(tmp_path: Path) -> None:
    folder = write_synthetic(tmp_path / "big", 30_000, seed=7)
    data = build(folder, by="category")
    s = summarize([folder]).to_dict()
    v = data.verdict
    assert (v.rows, v.ok, v.failed) == (s["rows"], s["status"]["ok"], s["failed_rows"])
    assert (v.prompt_tokens, v.total_tokens) == (s["tokens"]["prompt"], s["tokens"]["total"])
    assert (v.p50, v.p95, v.p99) == pytest.approx(
        (s["latency_ms"]["p50"], s["latency_ms"]["p95"], s["latency_ms"]["p99"])
    )
    assert v.rows_per_s == pytest.approx(s["throughput"]["rows_per_s"])
    assert {e.name: e.rows for e in data.errors if e.rows} == s["error_types"]
    assert data.attempts == s["attempts"]
    df = pd.read_parquet(folder / "results.parquet")
    by = df.groupby("category")["total_tokens"].sum().sort_values(ascending=False)
    assert [(g.key, g.total_tokens) for g in data.groups[:14]] == list(by.items())[:14]
    assert (data.groups[14].key, data.groups[14].total_tokens) == ("(2 others)", by.iloc[14:].sum())  # 16 categories
    assert sum(g.rows for g in data.groups) == len(df)
    top = df.nlargest(10, "latency_ms")
    assert [r["request_id"] for r in data.slowest] == list(top["request_id"])
    assert [r["file_url"] for r in data.slowest] == list(top["file_url"])
    assert [r["request_id"] for r in data.failed] == list(df[df["status"] != "ok"]["request_id"].head(20))
    first = df[df["error_type"] == data.errors[0].name].head(3)
    assert [x["gateway_request_id"] for x in data.errors[0].examples] == list(first["gateway_request_id"])


def test_page_size_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    small = write_report(write_synthetic(tmp_path / "small", 3_000, seed=1), by="category")
    large = write_report(write_synthetic(tmp_path / "large", 60_000, seed=1), by="category")
    assert large.stat().st_size < 1.5 * small.stat().st_size
    assert large.stat().st_size < 500_000
    text = large.read_text()
    assert text.count("<tr>") <= 10 + 20 + 5 * 3 + 15 + 3 + 10  # bounded tables, however many rows


# ----------------------------------------------------------------------------- pure parts


def test_timeline_counters_are_spread_over_bins_without_losing_counts() -> None:
    import pyarrow as pa

    points = [
        {
            "t": t,
            "in_flight": 4,
            "limit": 8 if t < 5 else 4,
            "requests": 3 * t,
            "rate_limited": t // 2,
            "server_error": 7 if t > 8 else 0,
            "timeout": 0,
        }
        for t in range(11)
    ]
    start = "2026-11-26T01:00:00+00:00"
    at = np.datetime64("2026-11-26T01:00:00") + (np.arange(20) * 500).astype("timedelta64[ms]")
    table = pa.table(
        {
            "run_id": ["x"] * 20,
            "status": ["ok"] * 18 + ["failed"] * 2,
            "started_at": pa.array(at, pa.timestamp("ms", tz="UTC")),
            "completed_at": pa.array(at + np.timedelta64(400, "ms"), pa.timestamp("ms", tz="UTC")),
        }
    )
    t = time_charts(Scan(table=table), {"run_id": "x", "started_at": start, "elapsed_s": 10.0, "timeline": points})
    assert t.errors is not None
    assert sum(t.errors["rate_limited"]) == 5 and sum(t.errors["server_error"]) == 7 and sum(t.errors["timeout"]) == 0
    assert sum(t.ok_per_s) * t.bin_s == pytest.approx(18) and sum(t.failed_per_s) * t.bin_s == pytest.approx(2)
    assert t.requests_per_s is not None and sum(t.requests_per_s) * t.bin_s == pytest.approx(30)
    assert t.limit is not None and t.limit[-1] == (10.0, 4.0) and min(v for _, v in t.limit) == 4.0
    assert t.estimated, "11 samples are too few: in flight comes from the rows"


@pytest.mark.parametrize(
    ("hi", "time", "expected"),
    [
        (7.0, False, [0, 2, 4, 6, 8]),
        (0.0, False, [0, 1]),
        (95.0, True, [0, 30, 60, 90, 120]),
        (3600.0, True, [0, 600, 1200, 1800, 2400, 3000, 3600]),
        (0.3, False, [0, 0.1, 0.2, 0.3]),
    ],
)
def test_axis_ticks_are_round(hi: float, time: bool, expected: list[float]) -> None:
    assert ticks(hi, 5 if not time or hi < 1000 else 6, time=time) == pytest.approx(expected)


def test_charts_draw_one_mark_per_datum_and_escape_labels() -> None:
    svg = xy_chart(
        "x",
        "a <chart>",
        Axis(0, 10),
        bars=[Bars("ok", "#0f0", [1, 0, 2]), Bars("bad", "#f00", [1, 1, 0])],
        lines=[Line("req", "#00f", [(0, 1), (10, 2)])],
        markers=[Marker("p50 3 ms", 3, "#000")],
    )
    assert svg.count('class="mark"') == 4 + 1 + 1  # zero-height bars are not drawn
    assert "a &lt;chart&gt;" in svg and "<chart>" not in svg
    bars = bar_list("y", "list", [("<b>", [3.0]), ("none", [0.0])], ["#00f"], lambda v: f"{v[0]:g}")
    assert bars.count('class="mark"') == 1 and "&lt;b&gt;" in bars


def test_write_report_replaces_the_page_atomically(night: Path) -> None:
    first = write_report(night)
    inode = first.stat().st_ino
    second = write_report(night, by="category")
    assert second == first and second.stat().st_ino != inode  # renamed over, never half-written in place
    assert not list(night.glob("._report.html.*.tmp"))
    assert "Tokens and cost by category" in second.read_text()
    assert pq.read_table(night / "results.parquet").num_rows == 40  # the report changes nothing else
    assert TEST_KEY not in second.read_text()


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(3).lognormal(8, 0.6, 300_000),  # most ranks' bins hold under COLLECT values
        np.full(70_000, 3.5),  # one bin holds every value: narrowed to the last bit
        np.concatenate([np.zeros(100_000), [1e9]]),
        np.random.default_rng(4).normal(0, 1, 777),  # negative values sort below positive ones
        np.array([42.0]),
    ],
)
def test_streamed_percentiles_equal_numpy_exactly(values: np.ndarray) -> None:
    chunks = [values[i : i + 16_384] for i in range(0, len(values), 16_384)]
    passes = []

    def again() -> list[np.ndarray]:
        passes.append(1)
        return chunks

    got = percentiles([0.5, 0.95, 0.99], len(values), again)
    assert got == list(np.percentile(values, [50, 95, 99]))
    assert len(passes) <= 4


def test_report_memory_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    """The report folds batches into fixed-size aggregates: from 8k to 131k rows its peak
    (numpy and Python by tracemalloc, Arrow by its pool) grows by less than the 16x larger
    folder's narrow columns would take (reading them whole grew it by 19 MB)."""
    peaks = []
    for rows in (8_192, 131_072):
        folder = write_synthetic(tmp_path / str(rows), rows, seed=2)
        code = (
            "import tracemalloc, pyarrow as pa; from pathlib import Path; "
            "from pipeline.htmlreport import write_report; "
            f"tracemalloc.start(); write_report(Path({str(folder)!r}), by='category'); "
            "print(pa.default_memory_pool().max_memory() + tracemalloc.get_traced_memory()[1])"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stdout.strip()))
    assert peaks[1] - peaks[0] < 6_000_000, peaks
