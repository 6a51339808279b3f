"""The docpipe command line: option parsing and exit codes, nothing else."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .config import load_config
from .errors import DocpipeError, StorageError, UsageError

EXIT_USAGE, EXIT_ABORTED = 2, 3


class _Fail(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"docpipe: error: {self.format_message()}", err=True)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            raise _Fail(str(e), EXIT_USAGE) from None
        except StorageError as e:
            raise _Fail(str(e), EXIT_ABORTED) from None
        except DocpipeError as e:
            raise _Fail(str(e), EXIT_ABORTED) from None

    return wrapper


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson

        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        return orjson.dumps(data).decode()


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("docpipe")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def logging_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                      help="Log line format.")(fn)  # fmt: skip
    fn = click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
                      show_default=True, help="Log level (debug shows every retry decision).")(fn)  # fmt: skip
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="docpipe")
def main() -> None:
    """Answer questions about documents in bulk through an OpenAI-compatible gateway.

    \b
    Examples:
      docpipe demo
      docpipe run manifest.csv --out out/tonight --concurrency 64
      docpipe run --job jobs/contracts.toml
    """


# ----------------------------------------------------------------------------- run


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--job", type=click.Path(dir_okay=False), help="TOML job file; flags override it."),
        click.option("--out", "out", type=click.Path(file_okay=False), help="Output folder (the run directory)."),
        click.option("--format", "manifest_format", type=click.Choice(["csv", "parquet"]),
                     help="Manifest format when the extension does not tell."),  # fmt: skip
        click.option("--base-url", help="Gateway base URL [default: https://api.apicore.ai/v1]."),
        click.option("--model", help="Model to ask [default: gpt-4o-all]."),
        click.option("--api-key", help="API key; better: APICORE_API_KEY or OPENAI_API_KEY in the environment."),
        click.option("--concurrency", type=click.IntRange(1, 100000), help="Most requests in flight [default: 16]."),
        click.option("--rpm", type=click.IntRange(1), help="Requests per minute across the pool."),
        click.option("--tpm", type=click.IntRange(1), help="Tokens per minute across the pool."),
        click.option("--fixed-concurrency", is_flag=True, default=None,
                     help="Keep --concurrency fixed instead of adapting to 429s and latency."),  # fmt: skip
        click.option("--max-attempts", type=click.IntRange(1), help="Attempts per row [default: 6]."),
        click.option("--timeout", type=click.FloatRange(min=0.1), help="Seconds per attempt [default: 180]."),
        click.option("--connect-timeout", type=click.FloatRange(min=0.1), help="Seconds to connect [default: 15]."),
        click.option("--row-budget", type=click.FloatRange(min=0.1),
                     help="Seconds per row across retries [default: 900]."),  # fmt: skip
        click.option("--unreadable-retries", type=click.IntRange(0),
                     help="Retries when the answer says the file could not be read [default: 1]."),  # fmt: skip
        click.option("--stream/--no-stream", default=None, help="Use SSE streaming."),
        click.option("--temperature", type=float, help="Generation temperature."),
        click.option("--max-tokens", type=click.IntRange(1), help="max_tokens sent with each request."),
        click.option("--system", help="System message."),
        click.option("--template", help="User message template, e.g. '{file_url} {question}'."),
        click.option("--retry-failed", is_flag=True, default=None, help="Also re-send rows that failed before."),
        click.option("--limit", type=click.IntRange(1), help="Only the first N manifest rows."),
        click.option("--shard", help="K/N: take the K-th of N deterministic parts of the manifest."),
        click.option("--deadline", help="Stop dispatching at this local time (HH:MM); exit 3, resumable."),
        click.option("--max-runtime", help="Stop dispatching after this long (7h, 90m, 3600); exit 3."),
        click.option("--max-cost", type=click.FloatRange(min=0), help="Budget in USD (needs prices in the job)."),
        click.option("--max-total-tokens", type=click.IntRange(1), help="Budget in tokens."),
        click.option("--grace-period", type=click.FloatRange(min=0),
                     help="Seconds in-flight requests get after a stop [default: 30]."),  # fmt: skip
        click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), help="Progress display."),
        click.option("--progress-interval", type=click.FloatRange(min=0.1),
                     help="Seconds between progress log lines [default: 30]."),  # fmt: skip
        click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_config(manifest: str | None, opts: dict[str, Any]) -> Any:
    from .config import parse_duration

    job = opts.pop("job", None)
    quiet = opts.pop("quiet", False)
    fixed = opts.pop("fixed_concurrency", None)
    if fixed:
        opts["adaptive"] = False
    shard = opts.pop("shard", None)
    if shard:
        try:
            k, n = (int(x) for x in shard.split("/"))
            if not 1 <= k <= n:
                raise ValueError
        except ValueError:
            raise UsageError(f"--shard must be K/N with 1 <= K <= N, not {shard!r}") from None
        opts["shard"] = (k, n)
    if opts.get("max_runtime"):
        opts["max_runtime"] = parse_duration(opts["max_runtime"])
    if quiet:
        opts["progress"] = "none"
    if manifest:
        opts["manifest"] = manifest
    cfg = load_config(job, **opts)
    if not cfg.manifest:
        raise UsageError("no manifest: give MANIFEST or set manifest in the job file")
    if not cfg.out:
        raise UsageError("no output folder: give --out or set out in the job file")
    return cfg, quiet


@main.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@run_options
@logging_options
@_errors
def run(manifest: str | None, log_level: str, log_format: str, **opts: Any) -> None:
    """Answer every row of MANIFEST (CSV or Parquet) and write OUT/results.parquet.

    Running the same command again resumes: rows already ok are skipped.

    \b
    Exit codes: 0 all rows ok, 1 finished with failed rows, 2 bad usage or input,
                3 aborted (key, quota, signal, deadline, budget, disk): resumable.
    \b
    Examples:
      docpipe run manifest.csv --out out/2026-11-26 --concurrency 64 --rpm 600
      docpipe run --job jobs/contracts.toml --retry-failed
      APICORE_API_KEY=sk-... docpipe run docs.parquet --out out/docs --stream
    """
    from .report import format_summary, make_progress
    from .runner import run as run_job

    _setup_logging(log_level, log_format)
    cfg, quiet = build_config(manifest, opts)
    if cfg.api_key is None and not cfg.base_url.startswith(("http://127.", "http://localhost")):
        raise UsageError(
            "no API key: set APICORE_API_KEY (or OPENAI_API_KEY), name a variable with "
            "api_key_env in the job file, or pass --api-key"
        )
    progress = make_progress(cfg.progress, cfg.progress_interval)
    summary = run_job(cfg, progress=progress, install_signals=True)
    if not quiet:
        click.echo(format_summary(summary))
    sys.exit(summary.exit_code)


# ----------------------------------------------------------------------------- demo


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="docpipe-demo", show_default=True,
              help="Folder for the demo's run directories.")  # fmt: skip
@click.option("--latency", type=float, default=0.4, show_default=True, help="Simulated seconds per answer.")
@click.option("--fault-rate", type=float, default=0.2, show_default=True,
              help="Share of first attempts the simulator fails (to show retries).")  # fmt: skip
@_errors
def demo(out: str, latency: float, fault_rate: float) -> None:
    """Run the sample manifests against the embedded simulator: no key, no network.

    \b
    Example:
      docpipe demo --out /tmp/docpipe-demo
    """
    from .demo import run_demo

    sys.exit(run_demo(Path(out), latency=latency, fault_rate=fault_rate))


# ----------------------------------------------------------------------------- simulate


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8088, show_default=True, help="0 picks a free port.")
@click.option("--latency", type=float, default=0.5, show_default=True, help="Mean seconds per answer.")
@click.option("--jitter", type=float, default=0.2, show_default=True, help="Latency +/- fraction.")
@click.option("--fault-rate", type=float, default=0.0, show_default=True, help="Share of first attempts that fail.")
@click.option("--fault-kinds", default=None, help="Comma-separated fault kinds (default: all).")
@click.option("--retry-after", type=float, default=None, help="Retry-After on 429 faults (default none).")
@click.option("--rpm", type=int, default=None, help="Simulated per-key RPM limit.")
@click.option("--capacity", type=int, default=None, help="Most concurrent requests before 429.")
@click.option("--api-key", default=None, help="Accept only this key (401 otherwise).")
@click.option("--quota-requests", type=int, default=None, help="Quota exhausted after N answers.")
@click.option("--seed", type=int, default=0, show_default=True)
def simulate(host: str, port: int, latency: float, jitter: float, fault_rate: float, fault_kinds: str | None,
             retry_after: float | None, rpm: int | None, capacity: int | None, api_key: str | None,
             quota_requests: int | None, seed: int) -> None:  # fmt: skip
    """Serve the simulated gateway (an OpenAI-compatible fake) until interrupted.

    \b
    Example:
      docpipe simulate --port 8088 --latency 1 --fault-rate 0.1 &
      docpipe run sample_inputs/reports.csv --out out/sim --base-url http://127.0.0.1:8088/v1
    """
    import asyncio

    from .simulator import SimConfig, serve

    kw: dict[str, Any] = dict(latency_s=latency, latency_jitter=jitter, fault_rate=fault_rate,
                              retry_after_s=retry_after, rpm=rpm, capacity=capacity, api_key=api_key,
                              quota_requests=quota_requests, seed=seed)  # fmt: skip
    if fault_kinds:
        kw["fault_kinds"] = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    config = SimConfig(**kw)

    def ready(bound: int) -> None:
        click.echo(f"simulator listening on http://{host}:{bound}/v1", err=False)
        sys.stdout.flush()

    try:
        asyncio.run(serve(config, host, port, ready=ready))
    except KeyboardInterrupt:
        pass


# ----------------------------------------------------------------------------- ops commands
# (validate, summary, diff, merge, models, quota)

# ----------------------------------------------------------------------------- end of ops commands


# ----------------------------------------------------------------------------- bench

# ----------------------------------------------------------------------------- end of bench


if __name__ == "__main__":  # pragma: no cover
    main()
