"""A real S3 endpoint for the tests: moto in server mode on 127.0.0.1 at a free port
(:func:`pipeline.benchs3.moto_server`, which ``docpipe bench --scenario ray-s3`` uses too).

The session fixture sets the standard AWS variables (test credentials, the endpoint)
for the whole session, before any Ray worker is started, so pyarrow, boto3 and the
Ray actors all reach it; they are restored at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.benchs3 import AWS_VARS, moto_server


@dataclass
class S3:
    """The running endpoint: its URL, a boto3 client, and the variables that reach it."""

    endpoint: str
    client: Any
    env: dict[str, str]

    def bucket(self) -> str:
        """A new, empty bucket for one test."""
        name = f"docpipe-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return sorted(o["Key"] for o in found)


@pytest.fixture(scope="session", name="s3")
def s3_server() -> Iterator[S3]:
    """The endpoint, for the session (import ``s3_server`` into a test module, ask for ``s3``)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    pytest.importorskip("boto3", reason="boto3 is not installed")
    with moto_server() as server:
        saved = {k: os.environ.pop(k, None) for k in AWS_VARS}
        os.environ.update(server.env)
        try:
            yield S3(server.url, server.client, server.env)
        finally:
            for k in AWS_VARS:
                os.environ.pop(k, None)
                if saved[k] is not None:
                    os.environ[k] = saved[k]
