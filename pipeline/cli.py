"""The docpipe command line: option parsing and exit codes, nothing else."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import ENGINES, FORMS, MANIFEST_FORMATS, PROGRESS_MODES, SCHEMA_MODES, JobConfig, load_config
from .errors import DocpipeError, ExitCode, StorageError, UsageError

log = logging.getLogger("docpipe")


class _Fail(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        # click declares exit_code on the class; each failure here carries its own documented code
        self.exit_code = code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"docpipe: error: {self.format_message()}", err=True)


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            raise _Fail(str(e), ExitCode.USAGE) from None
        except StorageError as e:
            raise _Fail(str(e), ExitCode.ABORTED) from None
        except DocpipeError as e:
            raise _Fail(str(e), ExitCode.ABORTED) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:
            # a bug, not a verdict on the rows: its own exit code, one line, the traceback at debug
            log.debug("unexpected error", exc_info=True)
            raise _Fail(f"internal error: {type(e).__name__}: {e} (a bug in docpipe; --log-level debug "
                        "shows the traceback)", ExitCode.INTERNAL) from None  # fmt: skip

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
        for key in ("request_id", "gateway_request_id", "attempt", "error_type", "retry"):
            value = getattr(record, key, None)
            if value is not None:
                data[key] = value
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
    from .memory import use_lean_arrow_pool

    if click.get_current_context().invoked_subcommand == "run":
        _prefetch(_RUN_PREFETCH)
    use_lean_arrow_pool()  # process-wide, so the command does it, never the library


#: What ``docpipe run`` imports in a thread while the main thread imports pyarrow and reads
#: the options (issue 10, first request from spawn): aiohttp's import loads the CA bundle twice
#: (its two default SSL contexts, ~80 ms of OpenSSL that runs without the GIL), so on a second
#: core it costs the first request little. The main thread imports the same modules when it
#: needs them (waiting for this thread if it is still at it), so a failure here changes nothing.
_RUN_PREFETCH = ("aiohttp",)


def _prefetch(names: tuple[str, ...]) -> None:
    import threading

    threading.Thread(target=_import_all, args=(names,), name="docpipe-prefetch", daemon=True).start()


def _import_all(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


# ----------------------------------------------------------------------------- run


_API_KEY_HELP = (
    "API key. Visible to every user of this machine in `ps` and in shell history: prefer "
    "--api-key-file, or APICORE_API_KEY / OPENAI_API_KEY in the environment."
)
_API_KEY_FILE_HELP = "File whose first line is the API key (kept out of `ps`)."
_BASE_URL_HELP = "Gateway base URL [default: $OPENAI_BASE_URL, else https://api.apicore.ai/v1]."


#: The options of run and validate (see :func:`run_options`).
_RUN_OPTIONS = [
    click.option("--job", metavar="FILE", help="TOML job file; flags override it."),
    click.option("--out", "out", metavar="DIR", help="Output folder (the run directory)."),
    click.option(
        "--format",
        "manifest_format",
        type=click.Choice(MANIFEST_FORMATS),
        help="Manifest format when the extension does not tell.",
    ),
    click.option("--base-url", metavar="URL", help=_BASE_URL_HELP),
    click.option("--model", help="Model to ask [default: gpt-4o-all]."),
    click.option(
        "--fallback-model",
        "fallback_models",
        multiple=True,
        metavar="MODEL",
        help="Ask this model when the row's model has no channel, filters the content or cannot read "
        "the document (repeat for more, in order).",
    ),
    click.option(
        "--model-price",
        "model_prices",
        multiple=True,
        metavar="MODEL=P/C[/R]",
        help="USD per 1M prompt / completion tokens [/ per request] for one model (repeatable); "
        "overrides the flat prices for it.",
    ),
    click.option("--model-column", metavar="NAME", help="Manifest column naming each row's model [default: model]."),
    click.option(
        "--form",
        type=click.Choice(FORMS),
        help="How the document is sent: inline text, image_url or file parts, or auto by type [default: inline].",
    ),
    click.option("--form-column", metavar="NAME", help="Manifest column naming each row's form [default: form]."),
    click.option(
        "--embed",
        is_flag=True,
        default=None,
        help="Fetch each document and send its bytes as a data: URL (with --form image_url, file or auto).",
    ),
    click.option("--embed-max-bytes", metavar="N", help="Largest document --embed sends [default: 20 MiB]."),
    click.option("--api-key", metavar="KEY", help=_API_KEY_HELP),
    click.option("--api-key-file", metavar="PATH", help=_API_KEY_FILE_HELP),
    click.option("--concurrency", metavar="N", help="Most requests in flight [default: 16]."),
    click.option("--rpm", metavar="N", help="Requests per minute across the pool."),
    click.option("--tpm", metavar="N", help="Tokens per minute across the pool."),
    click.option(
        "--fixed-concurrency",
        is_flag=True,
        default=None,
        help="Keep --concurrency fixed instead of adapting to 429s and latency.",
    ),
    click.option("--max-attempts", metavar="N", help="Attempts per row [default: 6]."),
    click.option("--timeout", metavar="DURATION", help="Per attempt, e.g. 180, 3m [default: 180 s]."),
    click.option("--connect-timeout", metavar="DURATION", help="To connect [default: 15 s]."),
    click.option("--row-budget", metavar="DURATION", help="Per row across retries [default: 900 s]."),
    click.option(
        "--unreadable-retries",
        metavar="N",
        help="Retries when the answer says the file could not be read [default: 1].",
    ),
    click.option("--stream/--no-stream", default=None, help="Use SSE streaming."),
    click.option("--temperature", metavar="T", help="Generation temperature (0-2)."),
    click.option("--max-tokens", metavar="N", help="max_tokens sent with each request."),
    click.option("--system", help="System message."),
    click.option("--template", help="User message template, e.g. '{file_url} {question}'."),
    click.option("--schema", metavar="FILE", help="JSON Schema of the answer: validated JSON, typed columns."),
    click.option(
        "--schema-mode",
        type=click.Choice(SCHEMA_MODES),
        help="How to ask for the schema: response_format, a system instruction, or auto (the first, "
        "falling back to the second) [default: auto].",
    ),
    click.option("--schema-retries", metavar="N", help="Re-asks of an answer that does not validate [default: 2]."),
    click.option("--retry-failed", is_flag=True, default=None, help="Also re-send rows that failed before."),
    click.option("--limit", metavar="N", help="Only the first N manifest rows."),
    click.option("--shard", metavar="K/N", help="Take the K-th of N deterministic parts of the manifest."),
    click.option("--deadline", metavar="HH:MM", help="Stop dispatching at this local time (24 h); exit 3."),
    click.option(
        "--max-runtime",
        metavar="DURATION",
        help="Stop dispatching after this long (7h, 90m, 1h30m, 3600); exit 3.",
    ),
    click.option("--max-cost", metavar="USD", help="Budget in USD (needs prices in the job)."),
    click.option("--max-total-tokens", metavar="N", help="Budget in tokens."),
    click.option(
        "--grace-period",
        metavar="DURATION",
        help="How long in-flight requests get after a stop [default: 30 s].",
    ),
    click.option("--progress", type=click.Choice(PROGRESS_MODES), help="Progress display."),
    click.option("--progress-interval", metavar="DURATION", help="Between progress log lines [default: 30 s]."),
    click.option("--quiet", "-q", is_flag=True, help="No progress and no summary."),
    click.option(
        "--engine",
        type=click.Choice(ENGINES),
        help="asyncio: one process (default); ray: Ray Data actors, local or --ray-address.",
    ),
    click.option("--ray-address", metavar="ADDR", help="Ray cluster to join (ray://host:10001) [default: local]."),
    click.option(
        "--ray-actors",
        metavar="N",
        help="Sender actors; the limits are split between them [default: 1 on one node, 4 on a cluster].",
    ),
    click.option(
        "--presign-ttl",
        metavar="DURATION",
        help="How long s3:// documents' presigned URLs stay valid (900, 15m, 1h) [default: 1h].",
    ),
    click.option(
        "--cache-dir",
        metavar="DIR",
        help="Local journal of s3:// outs [default: $DOCPIPE_CACHE_DIR, else ~/.cache/docpipe].",
    ),
]


#: Incremental nights (issue 12): reuse of earlier answers, document metadata.
_REUSE_OPTIONS = [
    click.option(
        "--reuse",
        multiple=True,
        metavar="PATH",
        help="Copy forward ok answers of this earlier output folder (repeatable; globs such as "
        "'out/*') whose request and document are unchanged: no request.",
    ),
    click.option("--max-age", metavar="DURATION", help="Ask again answers older than this (7d, 36h) with --reuse."),
    click.option(
        "--doc-meta/--no-doc-meta",
        default=None,
        help="HEAD each document for doc_etag, doc_last_modified, doc_bytes [default: on].",
    ),
    click.option("--head-timeout", metavar="DURATION", help="Per document HEAD [default: 10 s]."),
    click.option("--head-concurrency", metavar="N", help="Most document HEADs in flight [default: 32]."),
    click.option(
        "--ignore-query",
        metavar="NAMES",
        help="Comma-separated query parameters reuse ignores [default: signature and expiry ones].",
    ),
]


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of run and validate. Values go to JobConfig as given: it parses and
    checks every one (types, ranges, durations, HH:MM, K/N), so they are untyped here."""
    for option in reversed([*_RUN_OPTIONS, *_REUSE_OPTIONS]):
        fn = option(fn)
    return fn


def build_config(manifest: str | None, opts: dict[str, Any], *, require_out: bool = True) -> tuple[JobConfig, bool]:
    """Map the options of run/validate onto :func:`load_config`; returns (config, quiet).

    ``require_out``: the config is for a run, so :meth:`JobConfig.for_run` checks the
    output folder and the key rule; validate only needs a manifest."""
    job = opts.pop("job", None)
    quiet = bool(opts.pop("quiet", False))
    for name in ("fallback_models", "model_prices"):  # repeatable: none given is not given
        if not opts.get(name):
            opts[name] = None
    if opts.pop("fixed_concurrency", None):
        opts["adaptive"] = False
    opts["reuse"] = opts.get("reuse") or None  # click gives () when --reuse is not given
    if quiet:
        opts["progress"] = "none"
    if manifest:
        opts["manifest"] = manifest
    cfg = load_config(job, flags=opts)
    if require_out:
        return cfg.for_run(), quiet
    if not cfg.manifest:
        raise UsageError("no manifest: give MANIFEST or set manifest in the job file")
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
    from .runner import run as run_job

    _setup_logging(log_level, log_format)
    cfg, quiet = build_config(manifest, opts)  # checks the key rule too (JobConfig.for_run)
    from .memory import steady_collector

    steady_collector()  # process-wide, so the command does it, never the library
    summary = run_job(cfg, install_signals=True)
    if not quiet:
        _print_summary(summary, summary.out)
    _leave(summary.exit_code)


def _leave(code: int) -> NoReturn:
    """End the process. Everything is written, so the collections interpreter shutdown runs
    over every object pyarrow, numpy and the run left (0.2-0.8 s after a 10 000-row run,
    issue 10) only delay the exit: frozen objects are skipped. atexit handlers still run.
    The command does this as its last step; the library never touches the collector."""
    gc.freeze()
    sys.exit(code)


def _print_summary(summary: Any, out: str) -> None:
    """The end-of-run report; a failure to print it must not change the exit code _run.json holds.

    Its second part is ``docpipe summary OUT``: the figures the HTML report computed at the
    run's end (``summary.digest``), or, where no report was made, the same computation again
    (:mod:`pipeline.htmlreport.tally`). Never pandas (+45 MB, 0.35 s at the end of every run)."""
    from dataclasses import replace

    from .report import format_summary

    click.echo(format_summary(summary))
    if summary.results_file is None:
        return
    try:
        from .digest import format_summary_report

        digest = summary.digest
        if digest is None:
            from .htmlreport.tally import summarize

            digest = summarize([out])
        # the report read Path(out): name the folder as the user gave it, as `docpipe summary OUT` does
        report = format_summary_report(replace(digest, sources=tuple(replace(s, path=out) for s in digest.sources)))
    except Exception as e:
        log.debug("summary report failed", exc_info=True)
        click.echo(f"docpipe: error: cannot print the summary report: {type(e).__name__}: {e}", err=True)
        return
    click.echo("")
    click.echo(report)


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
@click.option("--no-channel-model", "no_channel_models", multiple=True, metavar="MODEL",
              help="Answer 503 no-channel for this model (repeatable); other models answer.")  # fmt: skip
@click.option("--response-format", "response_format", type=click.Choice(["accept", "reject", "ignore"]),
              default="accept", show_default=True,
              help="What the gateway does with response_format: use it, reject it (400 naming it), "
                   "or ignore it (answer prose).")  # fmt: skip
@click.option("--schema-fault-rate", type=float, default=0.0, show_default=True,
              help="Share of first structured answers given a schema fault.")  # fmt: skip
@click.option(
    "--schema-fault-kinds",
    default=None,
    help="Comma-separated schema faults: prose, fenced, sentence, violating, truncated (default: all).",
)
def simulate(host: str, port: int, latency: float, jitter: float, fault_rate: float, fault_kinds: str | None,
             retry_after: float | None, rpm: int | None, capacity: int | None, api_key: str | None,
             quota_requests: int | None, seed: int, response_format: str, schema_fault_rate: float,
             schema_fault_kinds: str | None, no_channel_models: tuple[str, ...]) -> None:  # fmt: skip
    """Serve the simulated gateway (an OpenAI-compatible fake) until interrupted.

    Structured answers (a request with response_format, or a schema in its system
    message) are JSON shaped by the schema; --schema-fault-rate spoils first answers
    in the --schema-fault-kinds ways, --response-format reject|ignore plays a channel
    that refuses or ignores response_format.

    \b
    Examples:
      docpipe simulate --port 8088 --latency 1 --fault-rate 0.1 &
      docpipe run pipeline/sample_inputs/reports.csv --out out/sim --base-url http://127.0.0.1:8088/v1
      docpipe simulate --response-format reject --schema-fault-rate 0.2 --schema-fault-kinds prose,truncated
      docpipe simulate --no-channel-model gpt-4o-all   # then: docpipe run ... --fallback-model gpt-4-all
    """
    import asyncio

    from .simulator import SimConfig, serve

    kw: dict[str, Any] = dict(latency_s=latency, latency_jitter=jitter, fault_rate=fault_rate,
                              retry_after_s=retry_after, rpm=rpm, capacity=capacity, api_key=api_key,
                              quota_requests=quota_requests, seed=seed, response_format=response_format,
                              schema_fault_rate=schema_fault_rate, no_channel_models=no_channel_models)  # fmt: skip
    if fault_kinds:
        kw["fault_kinds"] = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    if schema_fault_kinds:
        kw["schema_fault_kinds"] = tuple(k.strip() for k in schema_fault_kinds.split(",") if k.strip())
    try:
        config = SimConfig(**kw)
    except ValueError as e:  # one line, exit 2, as for every other bad flag
        raise click.UsageError(f"simulate: {e}") from None

    def ready(bound: int) -> None:
        click.echo(f"simulator listening on http://{host}:{bound}/v1", err=False)
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a served simulator ends
        asyncio.run(serve(config, host, port, ready=ready))


# ----------------------------------------------------------------------------- ops commands
# (validate, summary, diff, merge, models, quota)


def _json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _gateway_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--job", metavar="FILE", help="TOML job file for the gateway settings."),
        click.option("--base-url", metavar="URL", help=_BASE_URL_HELP),
        click.option("--api-key", metavar="KEY", help=_API_KEY_HELP),
        click.option("--api-key-file", metavar="PATH", help=_API_KEY_FILE_HELP),
        click.option("--timeout", metavar="DURATION", default="30", show_default=True, help="Per request."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _gateway_config(opts: dict[str, Any]) -> JobConfig:
    """models/quota: the gateway settings; no key rule (the gateway says whether it wants one)."""
    job = opts.pop("job", None)
    return load_config(job, flags=opts)


def _dumps(data: Any) -> str:
    """``--json`` output: a record's fields (dataclasses.asdict), or a plain dict."""
    from .report import dumps  # not .summary: that imports pandas

    return dumps(data)


@main.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@run_options
@click.option("--check-urls", is_flag=True, help="Also ask each document's server whether the file is there.")
@click.option("--url-concurrency", type=click.IntRange(1), default=16, show_default=True,
              help="URL checks in flight.")  # fmt: skip
@click.option("--url-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds per URL check.")  # fmt: skip
@_json_option
@logging_options
@_errors
def validate(manifest: str | None, check_urls: bool, url_concurrency: int, url_timeout: float, as_json: bool,
             log_level: str, log_format: str, **opts: Any) -> None:  # fmt: skip
    """Check MANIFEST the way `run` would, without sending a chat request.

    Takes the same options as `run`. Reports the column mapping, bad rows (data
    rows counted from 1), duplicate requests, rows OUT already holds, and the
    requests, prompt tokens and cost still to spend. --check-urls HEADs the
    document URL of every row still to send (a 1 KiB ranged GET where HEAD is refused).

    \b
    Exit codes: 0 fine, 1 bad rows or failing URLs, 2 the file or a column is unusable.
    \b
    Examples:
      docpipe validate manifest.csv --out out/tonight
      docpipe validate --job jobs/contracts.toml --check-urls --url-timeout 5
    """
    from .validate import format_validation
    from .validate import validate as check

    _setup_logging(log_level, log_format)
    cfg, _quiet = build_config(manifest, opts, require_out=False)
    if "://" in f"{cfg.manifest}{cfg.out}":  # object storage: read local copies (pipeline/objstore.py)
        from .objstore import is_remote, local_view, localize_manifest

        assert cfg.manifest is not None
        manifest_path = localize_manifest(cfg.manifest, cfg.cache_dir) if is_remote(cfg.manifest) else cfg.manifest
        cfg = cfg.replace(manifest=manifest_path, out=local_view(cfg.out, cfg.cache_dir) if cfg.out else None)
    report = check(cfg, check_urls=check_urls, url_concurrency=url_concurrency, url_timeout=url_timeout)
    click.echo(_dumps(report.to_dict()) if as_json else format_validation(report))
    sys.exit(report.exit_code)


class _OutPath(click.ParamType):  # type: ignore[type-arg]  # generic in click 8.2 stubs only
    """An output folder: a local one that exists, or an object store URL (s3://bucket/out),
    whose results are copied into the local cache when the command runs (pipeline/objstore.py)."""

    name = "OUT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if "://" in str(value):
            return str(value)
        return click.Path(exists=True).convert(value, param, ctx)


def _readable(out: str) -> str:
    """A local folder holding ``out``'s results (a copy for an object store URL)."""
    if "://" not in out:
        return out
    from .objstore import local_view

    return local_view(out)


@main.command()
@click.argument("outs", nargs=-1, required=True, type=_OutPath())
@_json_option
@_errors
def summary(outs: tuple[str, ...], as_json: bool) -> None:
    """Counts, tokens, cost, latency p50/p95/p99, throughput and failures of OUT folders.

    Several folders (e.g. shards) are summed into one report.

    \b
    Examples:
      docpipe summary out/tonight
      docpipe summary out/shard-1 out/shard-2 --json
    """
    from .digest import format_summary_report
    from .htmlreport.tally import summarize  # not .summary: pandas is for diff and merge

    report = summarize([_readable(o) for o in outs])
    click.echo(_dumps(report) if as_json else format_summary_report(report))


@main.command()
@click.argument("out_a", type=_OutPath())
@click.argument("out_b", type=_OutPath())
@click.option(
    "--out-changed",
    type=click.Path(dir_okay=False),
    help="Write the changed rows (request_id, question, answer_a, answer_b) to this Parquet file.",
)
@click.option("--key", type=click.Choice(["request_id", "content"]), default="request_id", show_default=True,
              help="Pair rows by request_id, or by file_url + question (runs with different models "
                   "and no id column).")  # fmt: skip
@_json_option
@_errors
def diff(out_a: str, out_b: str, out_changed: str | None, key: str, as_json: bool) -> None:
    """Compare two runs: changed answers, new and gone rows, tokens, cost, failure rate.

    \b
    Examples:
      docpipe diff out/gpt-4o-all out/gpt-4-all --out-changed changed.parquet
      docpipe diff out/monday out/tuesday --key content --json
    """
    from .summary import diff as compare
    from .summary import format_diff

    a, b = _readable(out_a), _readable(out_b)
    report = compare(a, b, key="content" if key == "content" else "request_id", out_changed=out_changed)
    click.echo(_dumps(report) if as_json else format_diff(report))


@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.argument("out_b", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--html", type=click.Path(dir_okay=False), help="Write the page here [default: OUT/_report.html].")
@click.option(
    "--by",
    metavar="COLUMN",
    help="Column to break tokens and cost down by, e.g. a passthrough column [default: model].",
)
@_errors
def report_command(out: str, out_b: str | None, html: str | None, by: str | None) -> None:
    """Write a one-page HTML report of OUT: verdict, charts, errors, slowest and failed rows.

    The page is one self-contained file (inline SVG, no script, nothing fetched):
    it opens from a mail attachment or a bucket. Every run writes OUT/_report.html
    at its end; this command makes it again, from the folder alone. With OUT_B (an
    earlier folder, e.g. last night's) it also shows what changed since, as
    `docpipe diff OUT_B OUT` does.

    \b
    Examples:
      docpipe report out/tonight
      docpipe report out/tonight out/last-night --by category --html /tmp/night.html
    """
    from .htmlreport import write_report

    path = write_report(Path(out), Path(out_b) if out_b else None, by=by, html=Path(html) if html else None)
    click.echo(str(path))


@main.command()
@click.argument("outs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "target", required=True, type=click.Path(file_okay=False),
              help="Folder for the merged results.parquet.")  # fmt: skip
@_json_option
@_errors
def merge(outs: tuple[str, ...], target: str, as_json: bool) -> None:
    """Concatenate output folders (e.g. shards) into one results.parquet.

    A request_id found in several folders keeps its latest outcome.

    \b
    Example:
      docpipe merge out/shard-1 out/shard-2 --out out/all
    """
    from .summary import format_merge
    from .summary import merge as combine

    report = combine(outs, target)
    click.echo(_dumps(report) if as_json else format_merge(report))


@main.command()
@_gateway_options
@_json_option
@_errors
def models(as_json: bool, **opts: Any) -> None:
    """List the models the gateway serves this key.

    \b
    Exit codes: 0 listed, 2 bad usage, 3 the key was refused or the gateway failed.
    \b
    Examples:
      docpipe models
      docpipe models --base-url http://127.0.0.1:8088/v1 --json
    """
    from .gateway_info import format_models
    from .gateway_info import models as list_models

    listed = list_models(_gateway_config(opts))
    click.echo(_dumps(listed) if as_json else format_models(listed))


@main.command()
@_gateway_options
@_json_option
@_errors
def quota(as_json: bool, **opts: Any) -> None:
    """Show the key's limit, usage and what is left, in USD.

    \b
    Exit codes: 0 shown, 2 bad usage, 3 the key was refused or the gateway failed.
    \b
    Examples:
      docpipe quota
      APICORE_API_KEY=sk-... docpipe quota --json
    """
    from .gateway_info import format_quota
    from .gateway_info import quota as fetch

    found = fetch(_gateway_config(opts))
    click.echo(_dumps(found) if as_json else format_quota(found))


# ----------------------------------------------------------------------------- end of ops commands


# ----------------------------------------------------------------------------- bench


@main.command()
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(["all", "little-100", "little-1000", "faults", "cpu", "memory", "resume",
                                 "compaction", "faults-unkind", "random-429", "capacity", "startup", "memory-10k",
                                 "doc-meta", "ray", "report-1m", "reuse-1m", "structured-100k", "ray-s3",
                                 "reuse-mem"]),
              help="Run a predefined target scenario (repeatable; 'all': all but ray-s3, reuse-mem).")  # fmt: skip
@click.option("--rows", type=click.IntRange(1), default=10000, show_default=True,
              help="Manifest rows (custom run, and the ray-s3 scenario).")  # fmt: skip
@click.option("--rpm", type=click.IntRange(1), default=600, show_default=True,
              help="Client --rpm of the ray-s3 scenario.")  # fmt: skip
@click.option("--latency", type=click.FloatRange(min=0), default=0.2, show_default=True,
              help="Simulated seconds per answer (no jitter).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1), default=100, show_default=True, help="Client --concurrency.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of first attempts the simulator fails.")  # fmt: skip
@click.option("--fault-kinds", default=None, help="Comma-separated fault kinds [default: hang,429,truncated,...].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None, help="Client --timeout (seconds per attempt).")
@click.option("--fault-attempts", type=click.IntRange(1), default=1, show_default=True,
              help="Attempts of a row that may draw a fault.")  # fmt: skip
@click.option("--retry-after", type=click.FloatRange(min=0), default=None,
              help="Retry-After seconds on the '429' fault kind [default: none, empty body].")  # fmt: skip
@click.option("--capacity", type=click.IntRange(1), default=None, help="Simulator's in-flight cap (429 above it).")
@click.option("--adaptive", is_flag=True, help="Let the client adapt its concurrency (no --fixed-concurrency).")
@click.option("--resume-check", is_flag=True, help="Run the same command again and time it to 'nothing to do'.")
@click.option("--row-group-rows", type=click.IntRange(1), default=None,
              help="Manifest row group size [default: pyarrow's].")  # fmt: skip
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="Run the client under cProfile and write the stats here (last run wins).")  # fmt: skip
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Keep manifests and run folders here instead of a temp folder.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def bench(scenarios: tuple[str, ...], rows: int, rpm: int, latency: float, concurrency: int, fault_rate: float,
          fault_kinds: str | None, timeout: float | None, fault_attempts: int, retry_after: float | None,
          capacity: int | None, adaptive: bool, resume_check: bool, row_group_rows: int | None,
          profile: str | None, work_dir: str | None, as_json: bool) -> None:  # fmt: skip
    """Measure the real run path against the simulator, each in its own process.

    Reports requests/s against the Little's-law bound (concurrency / latency),
    client CPU per request, peak client RSS, time to first request and compaction
    time. Predefined scenarios judge the issue's targets (PASS/FAIL); exit code 1
    when any target fails.

    \b
    Examples:
      docpipe bench --rows 2000 --latency 0.1 --concurrency 100
      docpipe bench --scenario little-100 --scenario faults
      docpipe bench --rows 6000 --concurrency 200 --capacity 40 --adaptive
      docpipe bench --scenario all --json > bench.json
      docpipe bench --scenario ray-s3 --rows 10000 --rpm 600
    """
    import json as json_mod

    from . import bench as b

    def echo(line: str) -> None:
        click.echo(line, err=as_json)

    m = b.machine()
    echo(f"machine: {m['nproc']} cpus, {m['cpu']}, python {m['python']}")
    with b.work_dir(work_dir) as work:
        prof = Path(profile) if profile else None
        if scenarios:
            names = list(dict.fromkeys(scenarios))
            if "all" in names:
                names = [n for n in b.ALL_SCENARIOS if n not in b.NOT_IN_ALL or n in scenarios]
                click.echo(f"bench: 'all' leaves out {', '.join(b.NOT_IN_ALL)} (long runs: name them)", err=True)
            from .benchs3 import RayS3Spec

            results = b.run_scenarios(names, work, profile=prof, echo=lambda s: click.echo(s, err=True),
                                      ray_s3=RayS3Spec(rows=rows, rpm=rpm))  # fmt: skip
        else:
            kinds = tuple(k.strip() for k in fault_kinds.split(",") if k.strip()) if fault_kinds else b.DEFAULT_FAULTS
            spec = b.RunSpec(rows=rows, latency=latency, concurrency=concurrency, fault_rate=fault_rate,
                             fault_kinds=kinds, timeout=timeout, resume_check=resume_check,
                             row_group_rows=row_group_rows, fixed_concurrency=not adaptive,
                             fault_attempts=fault_attempts, retry_after_s=retry_after, capacity=capacity)  # fmt: skip
            results = [b.run_custom(spec, work, profile=prof)]
    for res in results:
        for label, r in res.runs.items():
            echo(b.run_line(f"{res.name}/{label}", r))
            if r.exit_code != 0 and r.stderr_tail:
                echo(f"  client stderr: {r.stderr_tail}")
    for res in results:
        echo(b.scenario_line(res))
    if as_json:
        click.echo(json_mod.dumps(b.to_json(results), indent=2))
    sys.exit(0 if all(r.passed for r in results) else 1)


# ----------------------------------------------------------------------------- end of bench


if __name__ == "__main__":  # pragma: no cover
    main()
