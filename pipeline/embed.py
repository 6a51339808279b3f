"""``--embed``: docpipe fetches the document itself and sends its bytes as a ``data:`` URL.

For documents the gateway cannot reach (a private network, links that expire before a
slow queue gets to them). Decisions:

- **When.** A row is fetched when a worker takes it, just before its first request, and
  its bytes are dropped with its outcome: memory holds the documents of the rows in
  flight only (the pool's workers, twice ``concurrency`` at most, each document at most
  ``embed_max_bytes`` plus its base64 text), however long the manifest. A row whose form is ``inline`` (a
  manifest ``form`` cell) is not fetched.
- **How many at once.** At most :data:`MAX_FETCHES` (or ``concurrency`` when lower)
  downloads run at the same time: document hosts are not the gateway, and a burst of
  hundreds of downloads would only queue behind the network.
- **Too large.** ``Content-Length`` above ``embed_max_bytes`` (default 20 MiB), or a body
  that grows past it while read, fails the row with ``error_type = invalid_input`` and
  no chat request; the download stops at the limit.
- **Failures.** 4xx from the document host fails the row (``invalid_input``, the status
  in ``http_status``); 5xx, timeouts and connection errors are tried :data:`FETCH_ATTEMPTS`
  times with a short back-off, then fail the row (``connection``). Neither costs a
  chat request.
- **No key.** The fetch uses a session of its own, without the gateway's
  ``Authorization`` header: the API key never goes to a document host. An ``s3://``
  document is fetched through a presigned URL (pipeline/presign.py).
- **Content type.** The response's ``Content-Type`` (else one guessed from the URL's
  extension, else ``application/octet-stream``) goes into the ``data:`` URL; the
  filename is the URL path's last segment (``document`` when it has none).
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from .client import exact_timeout, redact, short
from .config import JobConfig
from .errors import RequestError, RetryableError, RowFatalError
from .forms import Form
from .presign import Presigner, is_s3_url
from .records import Document, Row

#: Downloads at the same time, at most.
MAX_FETCHES = 32
#: Tries per document for transient failures (5xx, timeouts, connection errors).
FETCH_ATTEMPTS = 3
_BACKOFF_S = 0.5
_CHUNK = 1 << 16


class DocumentFetcher:
    """The run's downloads for ``--embed``. Use as an async context manager; a no-op
    (:meth:`wanted` is always False) when the run does not embed."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.limit = cfg.embed_max_bytes
        self._gate = asyncio.Semaphore(min(MAX_FETCHES, cfg.concurrency))
        self._timeout = exact_timeout(cfg.timeout, cfg.connect_timeout)
        self.session: aiohttp.ClientSession | None = None
        self._presigner = Presigner(cfg.presign_ttl)
        self.fetched = 0  # documents fetched, for _run.json
        self.bytes = 0

    async def __aenter__(self) -> DocumentFetcher:
        if self.cfg.embed:
            self.session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True,
                                                 headers={"User-Agent": "docpipe/0.1"})  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def wanted(self, row: Row) -> bool:
        """Whether ``row`` is sent with its bytes (the run embeds and the row's form is not inline)."""
        return self.session is not None and (row.form or self.cfg.form) != Form.INLINE

    async def fetch(self, row: Row) -> Document:
        """The row's document; raises RequestError (row-fatal) when it cannot be had."""
        url = row.file_url.strip()
        if is_s3_url(url):  # a private s3:// document: fetched through a presigned URL (pipeline/presign.py)
            try:
                url = self._presigner.sign(url)
            except Exception as e:  # botocore: no credentials, bad config
                raise RowFatalError(f"cannot presign {row.file_url.strip()}: {type(e).__name__}",
                                    error_type="invalid_request") from None  # fmt: skip
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                async with self._gate:
                    return await self._get(url)
            except RetryableError:
                if attempt == FETCH_ATTEMPTS:
                    raise
            await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(self, url: str) -> Document:
        assert self.session is not None, "use DocumentFetcher as an async context manager"
        try:
            async with self.session.get(url) as resp:
                if resp.status != 200:
                    raise _http_error(resp.status, self._shown(url))
                if resp.content_length is not None and resp.content_length > self.limit:
                    raise self._too_large(url, resp.content_length)
                data = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    data += chunk
                    if len(data) > self.limit:
                        raise self._too_large(url, None)
                ctype = resp.headers.get("Content-Type", "")
        except RequestError:
            raise
        except TimeoutError:
            raise RetryableError(f"fetching the document: no answer within {self.cfg.timeout:g} s",
                                 error_type="connection") from None  # fmt: skip
        except aiohttp.ClientError as e:
            raise RetryableError(short(f"fetching the document: {self._shown(str(e))}"),
                                 error_type="connection") from None  # fmt: skip
        self.fetched += 1
        self.bytes += len(data)
        return document(url, bytes(data), ctype)

    def _too_large(self, url: str, size: int | None) -> RowFatalError:
        said = f"{size} bytes" if size is not None else "more bytes than that"
        return RowFatalError(f"document too large to embed: --embed-max-bytes is {self.limit}, it has {said} "
                             f"({self._shown(url)})", error_type="invalid_input")  # fmt: skip

    def _shown(self, text: str) -> str:
        return redact(text, self.cfg.api_key)

    def info(self) -> dict[str, Any]:
        return {"embedded_documents": self.fetched, "embedded_bytes": self.bytes} if self.cfg.embed else {}


def document(url: str, data: bytes, content_type: str = "") -> Document:
    """``data`` as a Document: its ``data:`` URL, filename and content type (module docstring)."""
    name = unquote(PurePosixPath(urlsplit(url).path).name) or "document"
    ctype = content_type.split(";")[0].strip().lower() or mimetypes.guess_type(name)[0] or "application/octet-stream"
    data_url = f"data:{ctype};base64,{base64.b64encode(data).decode('ascii')}"
    return Document(data_url=data_url, filename=name, content_type=ctype, size=len(data))


def _http_error(status: int, url: str) -> RequestError:
    if status >= 500 or status in (408, 425, 429):
        return RetryableError(f"fetching the document: HTTP {status} ({url})", error_type="connection",
                              http_status=status)  # fmt: skip
    return RowFatalError(f"fetching the document: HTTP {status} ({url})", error_type="invalid_input",
                         http_status=status)  # fmt: skip
