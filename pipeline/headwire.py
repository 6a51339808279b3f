"""HEAD requests on kept-alive connections, headers only: the cheap path of the documents' HEADs.

A night that reuses everything is bound by its HEADs, and aiohttp's client spends ~300 µs
of CPU on each (URL objects, tracing hooks, cookie jar, response and payload objects); this
path spends ~90. It can be this small because a HEAD's answer never has a body (RFC 9110
§9.3.2): its framing is the blank line after the headers, the one part of HTTP/1.1 that
needs no parser library (httptools, for one, waits for a HEAD answer's Content-Length
bytes). Anything else goes through aiohttp in :mod:`pipeline.docmeta`: a URL that is not
plain ASCII ``http(s)://host/path`` (credentials, non-ASCII), a proxy, a redirect, and
the ranged GET where HEAD is refused.

Connections are kept per (scheme, host, port) and reused; one whose server closed it
between two HEADs (the keep-alive race) is replaced once. The caller bounds how many
HEADs run at once and their time (a cancelled HEAD closes its connection).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import NamedTuple
from urllib.parse import urlsplit

#: Bytes of a HEAD answer's headers, at most (a bigger one is "no metadata").
MAX_HEADERS = 64 * 1024

#: Seconds a host's lookup (its addresses, or its failure) is reused: aiohttp's default DNS cache.
DNS_TTL = 10.0


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value


class WireError(ConnectionError):
    """The server closed the connection or answered something that is not HTTP/1.x."""


class _Conn(asyncio.Protocol):
    """One connection: at most one HEAD at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.keep = True  # False: the server asked to close, or the answer had trailing bytes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.waiter is not None and not self.waiter.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADERS:
                    self._fail(WireError("answer headers too large"))
                return
            try:
                answer = _parse(bytes(self.buf[:end]))
            except (ValueError, UnicodeDecodeError) as e:
                self._fail(WireError(f"not an HTTP answer: {e}"))
                return
            del self.buf[: end + 4]
            if 100 <= answer.status < 200:  # an interim answer: the real one follows
                continue
            self.keep = not self.buf and answer.headers.get("connection", "").lower() != "close"
            self.waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(WireError("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        self.keep = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _parse(head: bytes) -> Answer:
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1.") or not status.isdigit():
        raise ValueError(lines[0][:40])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or name != name.strip():
            raise ValueError("malformed header line")
        headers[name.lower()] = value.strip()
    return Answer(int(status), headers)


class Target(NamedTuple):
    key: tuple[str, str, int]
    request: bytes


def target(url: str, user_agent: str) -> Target | None:
    """The connection key and request bytes of a HEAD of ``url``, or None when this path
    does not take it (see the module docstring)."""
    if not url.isascii() or not url.isprintable():
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or "%" in parts.hostname:
        return None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    port = port or (443 if scheme == "https" else 80)
    host = parts.netloc
    request = f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\nAccept: */*\r\n\r\n"
    return Target((scheme, parts.hostname, port), request.encode("ascii"))


class HeadWire:
    """Kept-alive connections and HEADs on them. ``close()`` at the end."""

    def __init__(self, *, max_idle: int) -> None:
        self.max_idle = max_idle
        self.idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._idle_count = 0
        self._ssl: ssl.SSLContext | None = None
        # (host, port) -> (expiry, lookup): one lookup shared by every HEAD to a host, its
        # failure too. Without it each new connection asked the resolver itself, and a few
        # dozen concurrent lookups of an unknown host each waited out the resolver's 5 s
        # timeout (1 500 rows' HEADs kept a run 290 s past its last answer)
        self._dns: dict[tuple[str, int], tuple[float, asyncio.Future[str]]] = {}

    async def head(self, t: Target) -> Answer:
        """The answer to ``t``'s HEAD; raises WireError or OSError (the caller's timeout cancels it)."""
        conn = self._take(t.key)
        if conn is not None:
            try:
                return await self._ask(conn, t)
            except WireError:
                if conn.buf:  # the server answered something: not the keep-alive race
                    raise
        return await self._ask(await self._open(t.key), t)

    async def _ask(self, conn: _Conn, t: Target) -> Answer:
        assert conn.transport is not None
        conn.waiter = asyncio.get_running_loop().create_future()
        try:
            conn.transport.write(t.request)
            answer = await conn.waiter
        except BaseException:
            conn.close()  # an unfinished answer (timeout, cancel, error) leaves the connection unusable
            raise
        conn.waiter = None
        self._give(t.key, conn)
        return answer

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            if not conn.closed:
                return conn
        return None

    def _give(self, key: tuple[str, str, int], conn: _Conn) -> None:
        if conn.keep and not conn.closed and self._idle_count < self.max_idle:
            self.idle.setdefault(key, []).append(conn)
            self._idle_count += 1
        else:
            conn.close()

    async def _open(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        address = await asyncio.shield(self._resolve(host, port))
        _, conn = await loop.create_connection(_Conn, address, port, ssl=context,
                                               server_hostname=host if context else None)  # fmt: skip
        return conn

    def _resolve(self, host: str, port: int) -> asyncio.Future[str]:
        """The address to connect to for ``host``: looked up once per :data:`DNS_TTL`."""
        now = time.monotonic()
        entry = self._dns.get((host, port))
        if entry is not None and entry[0] > now:
            return entry[1]
        future = asyncio.ensure_future(self._lookup(host, port))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" warning
        self._dns[(host, port)] = (now + DNS_TTL, future)
        return future

    @staticmethod
    async def _lookup(host: str, port: int) -> str:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return str(infos[0][4][0])

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        self._idle_count = 0
