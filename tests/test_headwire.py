"""The documents' HEADs on docpipe's own connections (pipeline/headwire.py): real HTTP to the
simulator's /files, and to a bare server that closes each kept-alive connection after one answer."""

from __future__ import annotations

import asyncio
from email.utils import formatdate
from typing import Any

from pipeline.docmeta import DocHeads
from pipeline.headwire import HeadWire, target
from pipeline.simulator.files import Files


def _heads(urls: list[str], concurrency: int) -> tuple[list[Any], dict[str, int]]:
    async def main() -> tuple[list[Any], dict[str, int]]:
        async with DocHeads(timeout=5, concurrency=concurrency) as heads:
            docs = [heads.get(u) for u in urls]
            await heads.settle()
            return [d.meta for d in docs], heads.counts

    return asyncio.run(main())


def test_heads_on_kept_alive_connections_give_each_document_its_own_metadata(sim: Any) -> None:
    server = sim(latency_s=0.0)
    names = [f"k{i}.pdf" for i in range(300)]
    metas, counts = _heads([f"{server.files_url}/{n}" for n in names], concurrency=8)
    files = Files()
    for name, meta in zip(names, metas, strict=True):
        tag, modified, size = files.meta(name)
        assert (meta.etag, meta.last_modified, meta.size) == (f'"{tag}"', float(modified), size)
    assert server.files()["heads"] == 300 and counts["failed"] == 0


def test_a_connection_closed_by_the_server_between_heads_is_replaced() -> None:
    connections: list[int] = []

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        date = formatdate(1_780_000_000, usegmt=True)
        # no "Connection: close": the client learns of the close only when it sends the next HEAD
        writer.write(f'HTTP/1.1 200 OK\r\nETag: "v1"\r\nLast-Modified: {date}\r\nContent-Length: 7\r\n\r\n'.encode())
        await writer.drain()
        writer.close()

    async def main() -> list[Any]:
        server = await asyncio.start_server(answer_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        wire = HeadWire(max_idle=1)
        answers = []
        for i in range(5):
            t = target(f"http://127.0.0.1:{port}/d{i}.pdf", "docpipe")
            assert t is not None
            answers.append(await wire.head(t))
            await asyncio.sleep(0.01 if i % 2 else 0)  # the server's close has arrived, or not yet: both are handled
        wire.close()
        server.close()
        return answers

    answers = asyncio.run(main())
    assert [(a.status, a.headers["etag"], a.headers["content-length"]) for a in answers] == [(200, '"v1"', "7")] * 5
    assert len(connections) == 5


def test_urls_the_cheap_path_does_not_take_go_through_aiohttp() -> None:
    assert target("http://h.example/a.pdf?x=1", "docpipe") is not None
    for url in ("ftp://h.example/a.pdf", "http://user:pw@h.example/a.pdf", "https://h.example/ä.pdf",
                "s3://bucket/key", "http:///nohost"):  # fmt: skip
        assert target(url, "docpipe") is None


def test_a_host_that_does_not_resolve_is_looked_up_once_not_once_a_head(caplog: Any) -> None:
    # Each connection asking the resolver itself made a few dozen concurrent lookups of an
    # unknown host each wait out the resolver's timeout (5 s here, past this test's 2 s
    # head timeout), which kept a 1 500-row run 290 s past its last answer.
    caplog.set_level("DEBUG", logger="docpipe")

    async def main() -> dict[str, int]:
        async with DocHeads(timeout=2, concurrency=32) as heads:
            for i in range(200):
                heads.get(f"https://docs.nohost.invalid/{i}.pdf")
            await heads.settle()
            return heads.counts

    counts = asyncio.run(main())
    assert counts["heads"] == counts["failed"] == 200
    reasons = [r.getMessage() for r in caplog.records if "no document metadata" in r.getMessage()]
    assert len(reasons) == 200 and not [r for r in reasons if "TimeoutError" in r], reasons[:3]
