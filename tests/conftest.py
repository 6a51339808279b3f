"""Shared fixtures: a real simulator on 127.0.0.1, manifests on disk, CLI subprocesses."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig, load_config
from pipeline.simulator import SimConfig, SimServer

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may ever see a real key or reach a real gateway."""
    for name in list(os.environ):
        if name.startswith(("APICORE_", "OPENAI_", "DOCPIPE_")):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sim() -> Iterator[Callable[..., SimServer]]:
    """Factory: ``server = sim(latency_s=0.05, fault_rate=0.3)``; all stopped at teardown."""
    servers: list[SimServer] = []

    def start(**config: Any) -> SimServer:
        config.setdefault("latency_s", 0.02)
        server = SimServer(SimConfig(**config)).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def make_rows(n: int, *, prefix: str = "q", start: int = 0) -> list[dict[str, str]]:
    return [
        {"file_url": f"https://docs.example.com/{prefix}/{i}.pdf", "question": f"What is item {i}?"}
        for i in range(start, start + n)
    ]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def fast_config(manifest: Path, out: Path, server: SimServer, **kw: Any) -> JobConfig:
    """Settings for tests: the simulator, no back-off sleeps, no progress output."""
    kw.setdefault("concurrency", 8)
    kw.setdefault("backoff_initial", 0.0)
    kw.setdefault("backoff_max", 0.0)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("progress", "none")
    kw.setdefault("api_key", TEST_KEY)
    kw.setdefault("doc_meta", False)  # no HEADs to the manifests' docs.example.com: 127.0.0.1 only
    return load_config(manifest=str(manifest), out=str(out), base_url=server.url, **kw)


def _child_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APICORE_", "OPENAI_"))}
    env.update(extra or {})
    return env


def _offline(args: tuple[str, ...]) -> tuple[str, ...]:
    """``docpipe run`` without document HEADs unless the test asks for them: the manifests'
    docs.example.com is not 127.0.0.1 (tests of doc metadata pass --doc-meta or --reuse)."""
    if args[:1] == ("run",) and not any(a in ("--doc-meta", "--no-doc-meta", "--reuse") for a in args):
        return (*args, "--no-doc-meta")
    return args


def cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``docpipe ARGS`` in a real subprocess and wait for it."""
    popen.setdefault("cwd", ROOT)
    args = _offline(args)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=_child_env(env), **popen)  # fmt: skip


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``docpipe ARGS`` in a real subprocess (to signal or kill it)."""
    args = _offline(args)
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_child_env(env), cwd=ROOT)  # fmt: skip
