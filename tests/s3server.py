"""A real S3 endpoint for the tests: moto in server mode on 127.0.0.1 at a free port.

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

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # fmt: skip


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
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _host, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}  # fmt: skip
    saved = {k: os.environ.pop(k, None) for k in AWS_VARS}
    os.environ.update(env)
    try:
        client = boto3.session.Session().client("s3", endpoint_url=endpoint)
        yield S3(endpoint, client, env)
    finally:
        for k in AWS_VARS:
            os.environ.pop(k, None)
            if saved[k] is not None:
                os.environ[k] = saved[k]
        server.stop()
