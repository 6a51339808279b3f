"""``docpipe demo``: the sample manifests through the real run path, against the
embedded simulator (no key, no network). The simulator fails a share of first
attempts on purpose so the demo shows retries doing their work."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from .config import load_config
from .report import format_summary
from .runner import EXIT_OK, run
from .simulator import SimConfig, SimServer

DEMO_KEY = "sk-demo-not-a-real-key"


def sample_inputs() -> Path:
    """The sample manifests: the repository's sample_inputs/ folder."""
    here = Path(__file__).resolve().parent.parent / "sample_inputs"
    if here.is_dir():
        return here
    return Path(str(resources.files("pipeline"))) / "sample_inputs"  # pragma: no cover


def run_demo(out: Path, *, latency: float = 0.4, fault_rate: float = 0.2) -> int:
    manifests = sorted(p for p in sample_inputs().iterdir() if p.suffix in (".csv", ".parquet"))
    if not manifests:
        raise click.ClickException(f"no sample manifests in {sample_inputs()}")
    sim = SimConfig(
        latency_s=latency,
        latency_jitter=0.5,
        fault_rate=fault_rate,
        fault_kinds=("429", "500", "502_html", "524_html", "truncated", "empty_choices", "error_in_200"),
        retry_after_s=None,
        api_key=DEMO_KEY,
    )
    worst = EXIT_OK
    with SimServer(sim).start() as server:
        click.echo(f"simulated gateway at {server.url} (latency ~{latency:g} s, {fault_rate:.0%} of first attempts fail)")
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
            )
            click.echo(f"\n== {path.name} -> {target}")
            summary = run(cfg)
            click.echo(format_summary(summary))
            # the sample CSV holds one deliberately bad row (an ftp:// URL), so
            # "finished with failed rows" is the expected ending, not a failure of the demo
            worst = max(worst, summary.exit_code if summary.exit_code != 1 else EXIT_OK)
        stats = server.stats()
    click.echo(
        f"\nsimulator saw {stats['requests']} requests, at most {stats['max_in_flight']} at once; "
        f"open the answers with: python -c \"import pandas as pd; "
        f"print(pd.read_parquet('{out / manifests[0].stem}/results.parquet')[['question','answer']])\""
    )
    return worst
