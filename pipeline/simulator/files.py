"""Documents the simulator serves, so runs can HEAD them: ``GET|HEAD /files/{name}``.

Every name exists (documents are virtual); the query string is ignored, so a
signed URL with a new signature is the same document. Each document has a
deterministic ETag (strong), ``Last-Modified`` and size, derived from its name
and its *version*; changing a document bumps its version, so all three change.

Per-document behaviours (``mode``), and a default for all others:

``normal``        strong ETag, Last-Modified, Content-Length
``weak``          ETag ``W/"..."``
``no_etag``       no ETag (Last-Modified and size only)
``no_meta``       neither ETag nor Last-Modified
``head_refused``  HEAD answers 405; a ``Range: bytes=0-0`` GET answers 206 with ``Content-Range``
``head_hang``     HEAD never answers (the client's timeout must end it)
``fail``          HEAD and GET answer 500

Documents of a chosen size for ``--embed`` (issue 15): ``GET /files/{name}?bytes=N``
answers exactly N bytes (0..64 MiB) that :func:`file_bytes` computes from the name, with
the Content-Type of its extension (``.png`` -> ``image/png``; ``?type=...`` overrides,
``?type=`` sends none), ``Content-Length`` and an ETag of the bytes; ``?status=NNN``
answers that status instead (a missing document: ``?status=404``).

Control plane: ``POST /_sim/files`` with a JSON object ``{"change": [names],
"mode": {name: mode}, "default": mode, "reset": true}`` (each key optional;
``reset`` zeroes the counters); ``GET /_sim/files``: the counters (``heads``,
``gets``, ``ranged_gets``) and the settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import orjson
from aiohttp import web

from . import responses as r

MAX_BYTES = 64 * 1024 * 1024
MODES = ("normal", "weak", "no_etag", "no_meta", "head_refused", "head_hang", "fail")
_EPOCH = 1_780_000_000  # 2026-05-28: documents' base Last-Modified


@dataclass
class Files:
    """The documents' versions, modes and the requests counted."""

    default: str = "normal"
    versions: dict[str, int] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"heads": 0, "gets": 0, "ranged_gets": 0})

    def meta(self, name: str) -> tuple[str, int, int]:
        """(etag tag, last-modified epoch seconds, size) of a document's current version."""
        version = self.versions.get(name, 0)
        digest = hashlib.blake2b(f"{name}\x1f{version}".encode(), digest_size=8).digest()
        seed = int.from_bytes(digest[:4], "little")
        return digest.hex(), _EPOCH + seed % 10_000_000 + version * 3600, 512 + seed % 65536 + version

    def control(self, body: dict[str, Any]) -> None:
        for name in body.get("change", []):
            self.versions[str(name)] = self.versions.get(str(name), 0) + 1
        for name, mode in dict(body.get("mode", {})).items():
            if mode not in MODES:
                raise ValueError(f"unknown file mode {mode!r}; modes: {', '.join(MODES)}")
            self.modes[str(name)] = mode
        if "default" in body:
            if body["default"] not in MODES:
                raise ValueError(f"unknown file mode {body['default']!r}; modes: {', '.join(MODES)}")
            self.default = body["default"]
        if body.get("reset"):
            self.counts = dict.fromkeys(self.counts, 0)

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts, "default": self.default, "changed": len(self.versions), "modes": len(self.modes)}


FILES = web.AppKey("files", Files)


async def serve_file(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /files/{name}``: the document's metadata (and, for GET, its bytes)."""
    files = request.app[FILES]
    name = request.match_info["name"]
    if request.method == "GET" and ("bytes" in request.query or "status" in request.query):
        files.counts["gets"] += 1
        return _sized(request, name)
    mode = files.modes.get(name, files.default)
    head = request.method == "HEAD"
    ranged = not head and request.headers.get("Range", "").startswith("bytes=0-")
    files.counts["heads" if head else "ranged_gets" if ranged else "gets"] += 1
    if mode == "fail":
        return r.json_response(500, b'{"error": "simulated document server failure"}')
    if head and mode == "head_refused":
        return web.Response(status=405, headers={"Allow": "GET"})
    if head and mode == "head_hang":
        await asyncio.sleep(3600)
    tag, modified, size = files.meta(name)
    headers = {"Content-Type": "application/pdf", "Accept-Ranges": "bytes"}
    if mode not in ("no_etag", "no_meta"):
        headers["ETag"] = f'W/"{tag}"' if mode == "weak" else f'"{tag}"'
    if mode != "no_meta":
        headers["Last-Modified"] = formatdate(modified, usegmt=True)
    if head:
        headers["Content-Length"] = str(size)
        return web.Response(status=200, headers=headers)
    if ranged:
        headers["Content-Range"] = f"bytes 0-0/{size}"
        return web.Response(status=206, body=b"%", headers=headers)
    return web.Response(status=200, body=(b"%PDF-1.4\n" + tag.encode() * size)[:size], headers=headers)


def file_bytes(name: str, size: int) -> bytes:
    """The ``size`` bytes ``GET /files/{name}?bytes=size`` serves."""
    block = hashlib.blake2b(name.encode(), digest_size=64).digest()
    return (block * (size // len(block) + 1))[:size]


def _sized(request: web.Request, name: str) -> web.Response:
    """``?bytes=N`` / ``?status=NNN``: see the module docstring."""
    query = request.query
    try:
        status = int(query.get("status", 200))
        size = int(query.get("bytes", 1000))
    except ValueError:
        return web.Response(status=400, text="bytes and status must be integers")
    if status != 200:
        return web.Response(status=status, text=f"simulated document status {status}")
    if not 0 <= size <= MAX_BYTES:
        return web.Response(status=400, text=f"bytes must be from 0 to {MAX_BYTES}")
    data = file_bytes(name, size)
    ctype = query.get("type", mimetypes.guess_type(name)[0] or "application/octet-stream")
    headers = {"ETag": f'"{hashlib.blake2b(data, digest_size=8).hexdigest()}"'}
    if ctype:
        headers["Content-Type"] = ctype
    return web.Response(body=data, headers=headers)


async def files_get(request: web.Request) -> web.Response:
    """``GET /_sim/files``: counters and settings."""
    return r.json_response(200, orjson.dumps(request.app[FILES].snapshot()))


async def files_post(request: web.Request) -> web.Response:
    """``POST /_sim/files``: change documents, set modes, reset counters; 400 naming a bad value."""
    files = request.app[FILES]
    try:
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        files.control(body)
    except (ValueError, TypeError) as exc:
        return r.invalid_request(str(exc))
    return r.json_response(200, orjson.dumps(files.snapshot()))
