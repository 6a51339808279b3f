"""Document metadata: one HEAD per document URL, so tomorrow can tell whether it changed.

Every run (``doc_meta = false`` / ``--no-doc-meta`` turns it off) asks each
document's server for its metadata itself, beside the chat request: ``HEAD``, or
``GET`` with ``Range: bytes=0-0`` where HEAD is refused (405, 501, 403: signed
URLs are often signed for GET only). From the answer it keeps ``ETag`` verbatim
(quotes and ``W/`` included), ``Last-Modified`` (as epoch seconds) and the size
(HEAD ``Content-Length``, or the total of ``Content-Range``): the results columns
``doc_etag``, ``doc_last_modified`` and ``doc_bytes``.

- HEADs are concurrent and bounded (``head_concurrency``) and time out after
  ``head_timeout``; a failure or a timeout is "no metadata" (the row is asked
  again, never failed) and is logged at debug level with the URL's signature
  redacted.
- At most :data:`BACKLOG` HEADs wait or run at once; past that a URL gets none (no
  metadata: asked again tomorrow) rather than holding memory or a chat request.
- One HEAD serves every row of the same URL: results are cached per URL, the most
  recent :data:`CACHE_URLS` URLs (a manifest lists a document's questions near
  each other; a URL met again after that many others is asked again).
- The session is docpipe's own, never the gateway's: the API key is never sent
  to a document's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from .client import EnvProxies, exact_timeout, redact
from .headwire import HeadWire, target
from .presign import Presigner, is_s3_url

log = logging.getLogger("docpipe")

#: Statuses that mean "HEAD refused": a ranged GET is tried instead.
HEAD_REFUSED = frozenset({403, 405, 501})
#: URLs whose HEAD result is kept (about 200 bytes each).
CACHE_URLS = 16384
#: HEADs started and not yet answered, at most. Beyond it (a document server far slower than
#: the gateway) a URL gets no HEAD: its rows are asked tomorrow, and memory stays bounded.
BACKLOG = 8192
#: Seconds a presigned HEAD of an ``s3://`` document is valid: it is sent at once.
PRESIGN_TTL = 300
_CONTENT_RANGE = re.compile(r"bytes\s+(?:\d+-\d+|\*)/(\d+)")


@dataclass(frozen=True, slots=True)
class DocMeta:
    """What a document's server said about it; any field may be missing."""

    etag: str | None
    last_modified: float | None  # epoch seconds
    size: int | None

    @property
    def strong_etag(self) -> bool:
        return bool(self.etag) and not self.etag.startswith("W/")  # type: ignore[union-attr]


def meta_from_headers(status: int, headers: Any) -> DocMeta:
    """The metadata of a 2xx answer to HEAD (``Content-Length``) or to a ranged GET
    (206 ``Content-Range: bytes 0-0/TOTAL``; a 200 ignoring the range: ``Content-Length``)."""
    # lower-case names: aiohttp's headers are case-insensitive, pipeline/headwire.py's are lower-cased
    etag = headers.get("etag") or None
    last_modified: float | None = None
    if lm := headers.get("last-modified"):
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            last_modified = parsedate_to_datetime(lm).timestamp()
    size: int | None = None
    text = headers.get("content-range") if status == 206 else headers.get("content-length")
    if text:
        m = _CONTENT_RANGE.search(text) if status == 206 else None
        digits = m.group(1) if m else text.strip()
        if digits.isdigit():
            size = int(digits)
    return DocMeta(etag, last_modified, size)


class Doc:
    """One URL's HEAD: its result once ``done`` (None: failed), and what waits for it."""

    __slots__ = ("done", "late", "meta", "task", "waiters")

    def __init__(self) -> None:
        self.meta: DocMeta | None = None
        self.done = False
        self.task: asyncio.Task[None] | None = None  # while the HEAD runs (for :meth:`DocHeads.wait`)
        # both owned by pipeline/incremental.py: rows parked on this HEAD, and outcomes
        # journaled before it answered (amended once it does)
        self.waiters: list[Any] = []
        self.late: list[Any] = []


class DocHeads:
    """The run's HEADs: ``get(url)`` starts one (or returns the cached one) and never waits.

    ``on_done(doc)`` runs after each HEAD (outside the concurrency bound), to settle the rows
    that waited for it. Use as an async context manager (the HTTP session)."""

    def __init__(self, *, timeout: float, concurrency: int,
                 on_done: Callable[[Doc], Awaitable[None]] | None = None) -> None:  # fmt: skip
        self.timeout = timeout
        self.concurrency = concurrency
        self.on_done = on_done
        self.cache: OrderedDict[str, Doc] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts = {"heads": 0, "ranged_gets": 0, "failed": 0, "skipped": 0}
        self._gate = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._proxies: EnvProxies | None = None
        self._wire = HeadWire(max_idle=concurrency)
        self.presigner: Presigner | None = None  # made for the first s3:// document (boto3)

    async def __aenter__(self) -> DocHeads:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0)
        # not trust_env (a thread hop per lookup): the environment's proxies are read once, here
        self._proxies = EnvProxies()
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=exact_timeout(self.timeout), headers={"User-Agent": "docpipe"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._wire.close()
        if self._session is not None:
            await self._session.close()

    def get(self, url: str) -> Doc:
        doc = self.cache.get(url)
        if doc is not None:
            self.cache.move_to_end(url)
            return doc
        if len(self.tasks) >= BACKLOG:
            self.counts["skipped"] += 1
            doc = Doc()
            doc.done = True
            return doc
        doc = self.cache[url] = Doc()
        if len(self.cache) > CACHE_URLS:
            self.cache.popitem(last=False)
        task = doc.task = asyncio.create_task(self._run(url, doc))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return doc

    async def wait(self, doc: Doc) -> DocMeta | None:
        """``doc``'s metadata once its HEAD answered (or failed, or timed out: None). For an
        engine that returns an answer with its metadata (the Ray engine's actors), where the
        asyncio engine's gate journals the answer first and amends it later."""
        task = doc.task
        if not doc.done and task is not None:
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)
        return doc.meta

    def peek(self, url: str) -> Doc | None:
        return self.cache.get(url)

    async def settle(self) -> None:
        """Wait for every HEAD started so far (and what their ``on_done`` does)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def _run(self, url: str, doc: Doc) -> None:
        async with self._gate:
            doc.meta = await self._fetch(url)
        doc.done = True
        doc.task = None
        if (doc.waiters or doc.late) and self.on_done is not None:
            await self.on_done(doc)

    async def _fetch(self, url: str) -> DocMeta | None:
        """The metadata of ``url``'s document; an ``s3://`` URL is HEADed presigned (below)."""
        if is_s3_url(url):
            try:
                head, get = self._presigned(url)
            except Exception as e:  # boto3 missing, no credentials: the rows are asked, never failed
                self._failed(url, f"cannot presign: {type(e).__name__}")
                return None
            return await self._http(head, get, shown=url)
        return await self._http(url, url, shown=url)

    def _presigned(self, url: str) -> tuple[str, str]:
        """A presigned HEAD of an ``s3://`` document, and a presigned GET for the ranged GET."""
        if self.presigner is None:
            self.presigner = Presigner(PRESIGN_TTL)
        return self.presigner.sign(url, "head_object"), self.presigner.sign(url)

    async def _http(self, url: str, get_url: str, *, shown: str) -> DocMeta | None:
        assert self._session is not None
        try:
            self.counts["heads"] += 1
            proxy = self._proxies.for_url(url) if self._proxies is not None else None
            status = await self._wire_head(url) if proxy is None else None
            if status is None or 300 <= status[0] < 400:  # not for the cheap path, or a redirect to follow
                async with self._session.head(url, allow_redirects=True, proxy=proxy) as resp:
                    status = resp.status, meta_from_headers(resp.status, resp.headers)
            if status[0] in HEAD_REFUSED:
                self.counts["ranged_gets"] += 1
                # a ranged GET of one byte; leaving the body unread closes the connection
                async with self._session.get(get_url, headers={"Range": "bytes=0-0"}, allow_redirects=True,
                                             proxy=proxy) as resp:  # fmt: skip
                    status = resp.status, meta_from_headers(resp.status, resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            self._failed(shown, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            return None
        if not 200 <= status[0] < 300:
            self._failed(shown, f"HTTP {status[0]}")
            return None
        return status[1]

    async def _wire_head(self, url: str) -> tuple[int, DocMeta] | None:
        """The HEAD on docpipe's own kept-alive connections (:mod:`pipeline.headwire`), or None
        when that path does not take the URL."""
        t = target(url, "docpipe")
        if t is None:
            return None
        async with asyncio.timeout(self.timeout):
            answer = await self._wire.head(t)
        return answer.status, meta_from_headers(answer.status, answer.headers)

    def _failed(self, url: str, why: str) -> None:
        self.counts["failed"] += 1
        log.debug("no document metadata for %s: %s (its rows are asked, not reused)", redact(url, None),
                  redact(why, None))  # fmt: skip
        return None
