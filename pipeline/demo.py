"""``docpipe demo``: the sample manifests through the real run path, against the
embedded simulator (no key, no network). The simulator fails a share of first
attempts on purpose so the demo shows retries doing their work."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import click

from .config import load_config
from .errors import ExitCode
from .report import format_summary
from .runner import run
from .simulator import SimConfig, SimServer

DEMO_KEY = "sk-demo-not-a-real-key"


@contextlib.contextmanager
def sample_inputs() -> Iterator[list[Path]]:
    """The sample manifests shipped inside the package (package data), as real files
    for as long as the ``with`` block lasts, whatever kind of install this is."""
    folder = resources.files("pipeline") / "sample_inputs"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith((".csv", ".parquet")))
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(resources.as_file(folder / n)) for n in names]


def answer_schema(manifest: Path) -> dict[str, object] | None:
    """The JSON Schema shipped beside a sample manifest (``invoices.csv`` -> ``invoices.schema.json``)."""
    schema = resources.files("pipeline") / "sample_inputs" / f"{manifest.stem}.schema.json"
    if not schema.is_file():
        return None
    loaded: dict[str, object] = json.loads(schema.read_text(encoding="utf-8"))
    return loaded


def run_demo(out: Path, *, latency: float = 0.4, fault_rate: float = 0.2) -> int:
    """Run every sample manifest against the embedded simulator; the worst exit code."""
    with sample_inputs() as manifests:
        if not manifests:
            raise click.ClickException("no sample manifests in the installed package")
        return _run_all(manifests, out, latency=latency, fault_rate=fault_rate)


def _two_nights(server: SimServer, out: Path, docs: int = 24) -> None:
    """Night 1 asks about every document the simulator serves; three change; night 2
    (``--reuse`` night 1) asks only about those three and copies the rest forward."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "nightly.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file_url", "question"])
        w.writerows([f"{server.files_url}/contracts/{i}.pdf", "When does this contract end?"] for i in range(docs))
    base: dict[str, Any] = {"manifest": str(manifest), "base_url": server.url, "api_key": DEMO_KEY, "concurrency": 8,
            "backoff_initial": 0.2, "backoff_max": 2.0, "timeout": 10.0, "progress": "none",
            "price_prompt_per_1m": 2.5, "price_completion_per_1m": 10.0}  # fmt: skip
    click.echo(f"\n== two nights over {docs} documents the simulator serves (HEAD: ETag, Last-Modified)")
    first = run(load_config(out=str(out / "night1"), **base))
    click.echo(f"night 1: {first.ok} ok in {first.requests} requests, cost ${first.cost_usd or 0:.4f}")
    server.files(change=[f"contracts/{i}.pdf" for i in (2, 11, 17)])
    before = server.stats()["requests"]
    second = run(load_config(out=str(out / "night2"), reuse=(str(out / "night1"),), **base))
    click.echo(f"night 2 (3 documents changed, --reuse night1): {second.ok} ok, {second.reused} reused, "
               f"{server.stats()['requests'] - before} requests, cost ${second.cost_usd or 0:.4f} "
               f"(saved ${second.cost_saved_usd or 0:.4f})")  # fmt: skip


def _run_all(manifests: list[Path], out: Path, *, latency: float, fault_rate: float) -> int:
    sim = SimConfig(
        latency_s=latency,
        latency_jitter=0.5,
        fault_rate=fault_rate,
        fault_kinds=("429", "500", "502_html", "524_html", "truncated", "empty_choices", "error_in_200"),
        retry_after_s=None,
        api_key=DEMO_KEY,
        schema_fault_rate=fault_rate,  # the invoices manifest: prose, fenced, invalid and cut answers
    )
    worst: int = ExitCode.OK
    with SimServer(sim).start() as server:
        click.echo(
            f"simulated gateway at {server.url} (latency ~{latency:g} s, {fault_rate:.0%} of first attempts fail)"
        )
        for path in manifests:
            target = out / path.stem
            cfg = load_config(
                manifest=str(path),
                out=str(target),
                base_url=server.url,
                api_key=DEMO_KEY,
                concurrency=8,
                backoff_initial=0.2,
                backoff_max=2.0,
                timeout=10.0,
                progress="none",
                price_prompt_per_1m=2.5,
                price_completion_per_1m=10.0,
                schema=answer_schema(path),
                doc_meta=False,  # the sample documents are not on this machine: no HEADs ("no network")
            )
            click.echo(f"\n== {path.name} -> {target}")
            summary = run(cfg)
            click.echo(format_summary(summary))
            # the sample CSV holds one deliberately bad row (an ftp:// URL), so
            # "finished with failed rows" is the expected ending, not a failure of the demo
            worst = max(worst, summary.exit_code if summary.exit_code != ExitCode.FAILED_ROWS else ExitCode.OK)
        _two_nights(server, out / "nights")
        stats = server.stats()
    click.echo(
        f"\nsimulator saw {stats['requests']} requests, at most {stats['max_in_flight']} at once; "
        f'open the answers with: python -c "import pandas as pd; '
        f"print(pd.read_parquet('{out / manifests[0].stem}/results.parquet')[['question','answer']])\""
    )
    click.echo(f"and each run's one-page report in a browser: {out / manifests[-1].stem}/_report.html")
    return worst
