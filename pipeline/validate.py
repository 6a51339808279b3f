"""``docpipe validate``: what a run would do with a manifest, without one chat request.

It reads the manifest the way a run does (:class:`~pipeline.manifest.Manifest`,
so file-level problems raise the same :class:`~pipeline.errors.ManifestError`,
exit 2) and reports the column mapping, bad rows, identical requests, rows an
output folder already holds, and an estimate of requests, prompt tokens and
cost for what remains. With ``check_urls`` it also asks each document's server
(HEAD, or a 1 KiB ranged GET where HEAD is refused) whether the file is there.

Decisions:

- Duplicate identical requests (same content, model, system message and
  parameters) are a warning, not a bad row: each still costs a request.
- The estimate is the one the budget and the TPM limiter use
  (:mod:`pipeline.budget`), so validate and a run price a manifest alike. Prompt
  tokens are for *our* text only; ``gpt-4o-all`` also bills the tokens of the
  fetched file, which no client can see, so ``cost_usd`` (prompts and fees) is a
  floor. ``cost_with_answers_usd`` adds the completion estimate (``max_tokens``
  when set, else 500 a request); ``cost_max_usd`` is that figure when
  ``max_tokens`` bounds the answers, else None.
- URL problems that make a row fail (unreachable, non-2xx, expired signed link)
  count like bad rows (exit 1); a content type that is not a document (a web
  page, a video) is a warning, since the gateway may still read it. URLs are
  checked from this machine, which may see other hosts than the gateway does.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from .budget import Estimate, prompt_estimate
from .config import JobConfig
from .errors import ExitCode
from .idset import IdIndex, hash_ids
from .manifest import Manifest
from .rundir import RunDir

EXAMPLES = 20  # bad rows / URL problems listed in full; counts are always complete
_DUP_GROUPS = 5

#: Content types the gateway can read as a document. text/* other than HTML is text.
DOCUMENT_TYPES = (
    "application/pdf",
    "application/octet-stream",  # what object stores send when nobody set a type
    "application/msword",
    "application/rtf",
    "application/epub+zip",
    "application/json",
    "application/xml",
    "application/vnd.openxmlformats-officedocument.",  # docx, xlsx, pptx
    "application/vnd.ms-",  # xls, ppt
    "application/vnd.oasis.opendocument.",  # odt, ods, odp
    "text/",
    "image/",
)
WEB_PAGE_TYPES = ("text/html", "application/xhtml+xml")
#: HEAD refusals after which a ranged GET is tried (many CDNs and signed URLs refuse HEAD).
HEAD_REFUSED = {403, 405, 501}
_SIGNED_PARAMS = {"x-amz-signature", "x-amz-expires", "x-amz-credential", "x-goog-signature",
                  "x-goog-expires", "signature", "expires", "se", "sig"}  # fmt: skip


@dataclass(frozen=True)
class BadRow:
    row: int  # data rows counted from 1
    request_id: str
    reason: str


@dataclass(frozen=True)
class UrlProblem:
    url: str
    kind: str  # unreachable | http_error | expired_link | web_page | not_document
    detail: str
    status: int | None
    content_type: str | None
    rows: tuple[int, ...]  # first rows using this URL

    @property
    def fatal(self) -> bool:
        """Rows with this URL would fail (as opposed to a warning about the type)."""
        return self.kind in ("unreachable", "http_error", "expired_link")


@dataclass
class Validation:
    """What :func:`validate` found; ``exit_code`` is what ``docpipe validate`` returns."""

    manifest: str
    format: str
    columns: dict[str, Any]
    rows: int  # in scope (after --limit and --shard)
    bad_rows: int = 0
    bad_examples: list[BadRow] = field(default_factory=list)
    duplicate_requests: int = 0  # rows that repeat an earlier row's request
    duplicate_groups: list[list[int]] = field(default_factory=list)
    out: str | None = None
    done: int = 0  # rows OUT already holds (ok ones, or all under retry_failed=False)
    requests: int = 0  # requests the run would send
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the estimate: requests x (max_tokens or 500)
    cost_usd: float | None = None  # prompts and per-request fees: a floor
    cost_with_answers_usd: float | None = None  # plus the completion estimate
    cost_max_usd: float | None = None  # cost_with_answers_usd when max_tokens bounds it
    urls_checked: int | None = None
    url_problems: list[UrlProblem] = field(default_factory=list)

    @property
    def url_failures(self) -> int:
        return sum(p.fatal for p in self.url_problems)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED_ROWS if self.bad_rows or self.url_failures else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["url_failures"] = self.url_failures
        for p, problem in zip(d["url_problems"], self.url_problems, strict=True):
            p["fatal"] = problem.fatal
        d["exit_code"] = int(self.exit_code)
        return d


def validate(
    cfg: JobConfig,
    *,
    check_urls: bool = False,
    url_concurrency: int = 16,
    url_timeout: float = 10.0,
) -> Validation:
    """Check ``cfg.manifest`` (against ``cfg.out`` when set). Raises ManifestError
    for file-level problems; everything row-level lands in the returned report."""
    manifest = Manifest(cfg.manifest, cfg)  # type: ignore[arg-type]
    c = manifest.columns
    v = _empty_report(manifest, cfg)
    skip = RunDir(cfg.out).skip_index(cfg.retry_failed) if cfg.out else None
    keys = array("Q")  # 64 bits of each sendable row's request hash: 8 bytes a row
    key_rows = array("q")
    urls: dict[str, list[int]] = {}
    for batch in manifest.rows():
        done = _done_mask(batch, skip)
        for row, is_done in zip(batch, done, strict=True):
            v.rows += 1
            number = row.index + 1
            if row.invalid is not None:
                # listed whether or not an earlier run already recorded it as failed
                v.bad_rows += 1
                v.done += is_done
                if len(v.bad_examples) < EXAMPLES:
                    v.bad_examples.append(BadRow(number, row.request_id, row.invalid))
                continue
            digest = row.request_id if c.id is None else manifest.request_id_for(row.content)
            keys.append(int(digest[:16], 16))
            key_rows.append(number)
            if is_done:
                v.done += 1
                continue
            v.requests += 1
            v.prompt_tokens += prompt_estimate(row.content, cfg)
            if check_urls:
                seen = urls.setdefault(row.file_url.strip(), [])
                if len(seen) < 3:
                    seen.append(number)
    _set_estimate(v, cfg)
    v.duplicate_requests, v.duplicate_groups = _duplicates(keys, key_rows)
    if check_urls:
        v.urls_checked = len(urls)
        v.url_problems = asyncio.run(check_urls_async(urls, url_concurrency, url_timeout))
    return v


def _empty_report(manifest: Manifest, cfg: JobConfig) -> Validation:
    c = manifest.columns
    columns = {
        "file_url": c.file_url,
        "question": c.question,
        "id": c.id,
        "request_id": f"column {c.id!r}" if c.id else "hash of the request",
        "passthrough": dict(zip(c.passthrough, c.output_names, strict=True)),
        "template": cfg.template,
    }
    if cfg.schema is not None:  # the typed columns a structured run adds (pipeline/structured)
        from .schema import INPUT_COLUMNS, OUTCOME_COLUMNS
        from .structured.spec import compile_spec

        spec = compile_spec(cfg.schema).renamed([*INPUT_COLUMNS, *OUTCOME_COLUMNS, *c.output_names])
        columns["answer_columns"] = {col.name: str(col.type) for col in spec.columns}
    return Validation(manifest=manifest.path, format=manifest.format, columns=columns, rows=0, out=cfg.out)


def _set_estimate(v: Validation, cfg: JobConfig) -> None:
    est = Estimate.of(cfg, rows=v.rows - v.done, requests=v.requests, prompt_tokens=v.prompt_tokens)
    v.completion_tokens = est.completion_tokens
    v.cost_usd = est.min_cost_usd
    v.cost_with_answers_usd = est.cost_usd
    v.cost_max_usd = est.cost_usd if cfg.params.get("max_tokens") else None


def _done_mask(batch: list[Any], skip: IdIndex | None) -> Iterable[bool]:
    if skip is None or not len(skip) or not batch:
        return [False] * len(batch)
    return skip.contains(hash_ids([r.request_id for r in batch])).tolist()  # type: ignore[no-any-return]


def _duplicates(keys: array[int], rows: array[int]) -> tuple[int, list[list[int]]]:
    if not keys:
        return 0, []
    k = np.frombuffer(keys, dtype=np.uint64)
    r = np.frombuffer(rows, dtype=np.int64)
    uniq, inverse, counts = np.unique(k, return_inverse=True, return_counts=True)
    repeated = int(len(k) - len(uniq))
    groups: list[list[int]] = []
    if repeated:
        multi = np.flatnonzero(counts[inverse] > 1)  # positions of rows in a repeated group
        by_group: dict[int, list[int]] = {}
        for pos in multi:
            g = by_group.setdefault(int(inverse[pos]), [])
            if len(g) < 5:
                g.append(int(r[pos]))
            if len(by_group) > _DUP_GROUPS:
                break
        groups = sorted(by_group.values())[:_DUP_GROUPS]
    return repeated, groups


# -------------------------------------------------------------------------- URL checks


def signed_link_expiry(url: str) -> tuple[bool, datetime | None]:
    """(is a signed link, when it expires if the URL says) for S3, GCS, CloudFront and
    Azure SAS style query parameters."""
    params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    signed = bool(_SIGNED_PARAMS & params.keys())
    expiry: datetime | None = None
    try:
        for prefix in ("x-amz-", "x-goog-"):
            if f"{prefix}date" in params and f"{prefix}expires" in params:
                start = datetime.strptime(params[f"{prefix}date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
                expiry = start + timedelta(seconds=int(params[f"{prefix}expires"]))
        if expiry is None and params.get("expires", "").isdigit():
            expiry = datetime.fromtimestamp(int(params["expires"]), UTC)
        if expiry is None and "se" in params:
            expiry = datetime.fromisoformat(params["se"].replace("Z", "+00:00"))
            if expiry.tzinfo is None:
                expiry = expiry.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        expiry = None
    return signed, expiry


def classify_content_type(content_type: str | None) -> tuple[str, str] | None:
    """(kind, detail) when the type is not a document, else None (unknown types pass)."""
    if not content_type:
        return None
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in WEB_PAGE_TYPES:
        return "web_page", f"web page ({ctype}), not a document"
    if any(ctype.startswith(t) for t in DOCUMENT_TYPES):
        return None
    return "not_document", f"not a document type ({ctype})"


async def check_urls_async(
    urls: dict[str, list[int]], concurrency: int = 16, timeout: float = 10.0
) -> list[UrlProblem]:
    """Check every URL with at most ``concurrency`` in flight; problems in input order."""
    import aiohttp

    found: dict[str, UrlProblem] = {}
    pending = iter(urls.items())
    session_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    headers = {"User-Agent": "docpipe-validate/0.1"}
    async with aiohttp.ClientSession(
        connector=connector, timeout=session_timeout, headers=headers, trust_env=True
    ) as session:

        async def worker() -> None:
            for url, rows in pending:  # one shared iterator: each URL goes to one worker
                problem = await _check_one(session, url, timeout)
                if problem is not None:
                    found[url] = UrlProblem(url, problem[0], problem[1], problem[2], problem[3], tuple(rows))

        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(urls))))))
    return [found[u] for u in urls if u in found]


async def _check_one(session: Any, url: str, timeout: float) -> tuple[str, str, int | None, str | None] | None:
    import aiohttp

    signed, expiry = signed_link_expiry(url)
    if expiry is not None and expiry < datetime.now(UTC):
        return "expired_link", f"signed link expired at {expiry.isoformat()}", None, None
    try:
        status, ctype = await _probe(session, "HEAD", url)
        if status in HEAD_REFUSED:
            status, ctype = await _probe(session, "GET", url)
    except TimeoutError:
        return "unreachable", f"no answer within {timeout:g} s", None, None
    except aiohttp.ClientError as e:
        return "unreachable", f"{type(e).__name__}: {e}"[:200], None, None
    if status == 403 and signed:
        return "expired_link", "HTTP 403 on a signed link: expired or revoked", status, ctype
    if not 200 <= status < 300:
        return "http_error", f"HTTP {status}", status, ctype
    bad_type = classify_content_type(ctype)
    if bad_type is not None:
        return bad_type[0], bad_type[1], status, ctype
    return None


async def _probe(session: Any, method: str, url: str) -> tuple[int, str | None]:
    # a ranged GET reads at most 1 KiB; leaving the block unread drops the connection
    headers = {"Range": "bytes=0-1023"} if method == "GET" else None
    async with session.request(method, url, headers=headers, allow_redirects=True) as resp:
        return resp.status, resp.headers.get("Content-Type")


# -------------------------------------------------------------------------- text report


def format_validation(v: Validation) -> str:
    c = v.columns
    passthrough = ", ".join(src if src == dst else f"{src} -> {dst}" for src, dst in c["passthrough"].items())
    lines = [
        f"manifest: {v.manifest} ({v.format}, {v.rows} rows in scope)",
        f"columns: file_url <- {c['file_url']!r}, question <- {c['question']!r}, request_id <- {c['request_id']}",
        f"passthrough: {passthrough or '(none)'}",
    ]
    if "answer_columns" in c:
        lines.append("answer columns: " + ", ".join(f"{n} {t}" for n, t in c["answer_columns"].items()))
    if v.bad_rows:
        lines.append(f"bad rows: {v.bad_rows} (failed as invalid_input, never sent)")
        lines += [f"  row {b.row} ({b.request_id}): {b.reason}" for b in v.bad_examples]
        if v.bad_rows > len(v.bad_examples):
            lines.append(f"  ... and {v.bad_rows - len(v.bad_examples)} more")
    else:
        lines.append("bad rows: none")
    if v.duplicate_requests:
        groups = "; ".join(", ".join(map(str, g)) for g in v.duplicate_groups)
        lines.append(f"duplicate requests: {v.duplicate_requests} rows repeat an earlier row's request "
                     f"(rows {groups}); each costs a request")  # fmt: skip
    if v.out:
        lines.append(f"already done in {v.out}: {v.done} rows")
    estimate = (f"to send: {v.requests} requests, ~{v.prompt_tokens} prompt tokens of our text "
                f"and ~{v.completion_tokens} completion tokens")  # fmt: skip
    if v.cost_usd is not None:
        estimate += f", ~${v.cost_usd:.4f} before completion tokens"
        if v.cost_max_usd is not None:
            estimate += f" (at most ${v.cost_max_usd:.4f} with max_tokens answers)"
        elif v.cost_with_answers_usd is not None:
            each = v.completion_tokens // max(v.requests, 1)
            estimate += f" (~${v.cost_with_answers_usd:.4f} with answers of ~{each} tokens)"
    lines.append(estimate + "; the fetched files' tokens come on top")
    if v.urls_checked is not None:
        lines.append(f"urls: {v.urls_checked} checked, {v.url_failures} failing, "
                     f"{len(v.url_problems) - v.url_failures} warnings")  # fmt: skip
        for p in v.url_problems[:EXAMPLES]:
            rows = ", ".join(map(str, p.rows))
            lines.append(f"  {'FAIL' if p.fatal else 'warn'} {p.kind}: {p.url} (rows {rows}): {p.detail}")
        if len(v.url_problems) > EXAMPLES:
            lines.append(f"  ... and {len(v.url_problems) - EXAMPLES} more (see --json)")
    return "\n".join(lines)
