"""``GET /files/{name}``: documents for ``--embed`` tests and demos (a document host, not the gateway).

The bytes are a pure function of the name and the size, so a test computes what the
client must have sent with :func:`file_bytes`: ``?bytes=N`` (default 1000, at most
64 MiB) bytes of a blake2b stream of the name. The Content-Type follows the extension
(``.png`` -> ``image/png``, ``.pdf`` -> ``application/pdf``, else
``application/octet-stream``); ``?type=...`` overrides it (``?type=`` sends none).
``Content-Length`` is always sent, and an ``ETag`` of the bytes. A name starting with
``missing`` answers 404. Requests are counted in ``/_sim/stats`` as ``file_requests``.
"""

from __future__ import annotations

import hashlib
import mimetypes

from aiohttp import web

from .state import STATE

DEFAULT_BYTES = 1000
MAX_BYTES = 64 * 1024 * 1024


def file_bytes(name: str, size: int = DEFAULT_BYTES) -> bytes:
    """The ``size`` bytes the simulator serves for ``name``."""
    block = hashlib.blake2b(name.encode(), digest_size=64).digest()
    return (block * (size // len(block) + 1))[:size]


async def serve_file(request: web.Request) -> web.StreamResponse:
    """The handler of ``GET /files/{name}``."""
    st = request.app[STATE]
    st.file_requests += 1
    name = request.match_info["name"]
    if name.startswith("missing"):
        return web.Response(status=404, text="not found")
    try:
        size = int(request.query.get("bytes", DEFAULT_BYTES))
    except ValueError:
        return web.Response(status=400, text="bytes must be an integer")
    if not 0 <= size <= MAX_BYTES:
        return web.Response(status=400, text=f"bytes must be from 0 to {MAX_BYTES}")
    data = file_bytes(name, size)
    ctype = request.query.get("type", mimetypes.guess_type(name)[0] or "application/octet-stream")
    headers = {"ETag": f'"{hashlib.blake2b(data, digest_size=8).hexdigest()}"'}
    if ctype:
        headers["Content-Type"] = ctype
    return web.Response(body=data, headers=headers)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/files/{name}", serve_file)
