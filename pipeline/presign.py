"""Private documents: an ``s3://bucket/key`` file_url reaches the gateway as a presigned URL.

The gateway fetches the document itself, so it needs a URL it can open without our
credentials. :class:`PresigningClient` signs one just before each attempt (a retry an
hour later never carries an expired URL), valid for ``presign_ttl`` seconds, and
sends the row with that URL in place of the ``s3://`` one; everything docpipe keeps
(results, journal, ``_run.json``, logs) holds the ``s3://`` URL, and an error message
that echoes the signed URL is turned back into it (the signature never leaves the
request). The request_id is the hash of the ``s3://`` row, so a rerun matches.

Signing uses boto3 with Signature V4 (``X-Amz-*`` query parameters) and the standard
AWS variables; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` point it at an
S3-compatible store, whose own scheme (often ``http://``) the URL keeps. Rows without
an ``s3://`` URL pass through untouched, and boto3 is imported only for the first
``s3://`` row.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from .client import GatewayClient, redact
from .config import JobConfig
from .errors import RequestError, UsageError
from .records import Completion, Row
from .structured.ask import Turn

SCHEME = "s3://"


def is_s3_url(url: str) -> bool:
    return url[:5].lower() == SCHEME


class Presigner:
    """Makes presigned GET URLs for ``s3://bucket/key`` (one boto3 client, made on first use)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = int(ttl)
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise UsageError("s3:// documents need boto3: pip install 'docpipe[s3]'") from None
                from .objstore import endpoint_url

                # a session of our own: boto3's module-level default session is global state
                self._client = boto3.session.Session().client(
                    "s3", endpoint_url=endpoint_url(), config=Config(signature_version="s3v4")
                )
            return self._client

    def sign(self, url: str, method: str = "get_object") -> str:
        """A presigned URL for ``url`` (``s3://bucket/key``), valid for ``ttl`` seconds: a GET,
        or with ``method="head_object"`` a HEAD (the signature covers the HTTP method)."""
        parts = urlsplit(url.strip())
        params = {"Bucket": parts.netloc, "Key": parts.path.lstrip("/")}
        signed: str = self._s3().generate_presigned_url(method, Params=params, ExpiresIn=self.ttl)
        return signed


class PresigningClient(GatewayClient):
    """The gateway client, sending ``s3://`` documents as presigned URLs (see the module docstring)."""

    def __init__(self, cfg: JobConfig, *, connections: int | None = None) -> None:
        super().__init__(cfg, connections=connections)
        self.presigner = Presigner(cfg.presign_ttl)

    async def complete(self, row: Row, turn: Turn | None = None) -> Completion:
        url = row.file_url.strip()
        if not is_s3_url(url):
            return await super().complete(row, turn)
        try:
            signed = self.presigner.sign(url)
        except UsageError:
            raise
        except Exception as e:  # botocore: no credentials, bad config; never the row's fault alone
            raise RequestError(f"cannot presign {url}: {type(e).__name__}", error_type="invalid_request") from None
        sent = dataclasses.replace(row, file_url=signed, content=row.content.replace(url, signed))
        try:
            return await super().complete(sent, turn)
        except RequestError as e:
            # the client already blanked the signature; give the row its own URL back
            base = re.escape(signed.split("?", 1)[0])
            e.message = redact(re.sub(base + r"(?:\?[^\s\"'<>]*)?", lambda _m: url, e.message), None)
            e.args = (e.message,)
            raise
