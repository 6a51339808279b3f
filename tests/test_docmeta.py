"""Document metadata: headers to DocMeta, and signed URL parameters left out of reuse identity."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from pipeline.config import load_config
from pipeline.docmeta import meta_from_headers
from pipeline.signedurl import DEFAULT_IGNORE_QUERY, canonical_url, ignored_names


@pytest.mark.parametrize(
    ("status", "headers", "etag", "strong", "modified", "size"),
    [
        (200, {"ETag": '"abc"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT", "Content-Length": "42"},
         '"abc"', True, 1445412480.0, 42),
        (200, {"ETag": 'W/"abc"', "Content-Length": "7"}, 'W/"abc"', False, None, 7),
        (206, {"Content-Range": "bytes 0-0/1234", "Content-Length": "1"}, None, False, None, 1234),
        (206, {"Content-Range": "bytes */99"}, None, False, None, 99),
        (200, {"Last-Modified": "not a date", "Content-Length": "x"}, None, False, None, None),
    ],
)  # fmt: skip
def test_metadata_from_head_and_ranged_get_answers(
    status: int, headers: dict[str, str], etag: str | None, strong: bool, modified: float | None, size: int | None
) -> None:
    # aiohttp's case-insensitive headers, and pipeline/headwire.py's lower-cased names
    for given in (CIMultiDict(headers), {k.lower(): v for k, v in headers.items()}):
        meta = meta_from_headers(status, given)
        assert (meta.etag, meta.strong_etag, meta.last_modified, meta.size) == (etag, strong, modified, size)


def test_signed_url_parameters_are_left_out_of_the_reuse_identity_and_others_kept() -> None:
    ignore = ignored_names(DEFAULT_IGNORE_QUERY)
    s3 = "https://b.s3.amazonaws.com/k.pdf?X-Amz-Algorithm=A&X-Amz-Signature=s1&X-Amz-Date=d&versionId=3"
    assert canonical_url(s3, ignore) == "https://b.s3.amazonaws.com/k.pdf?versionId=3"
    azure = "https://a.blob.core.windows.net/c/k.pdf?sv=2022&se=2026&sp=r&sig=xyz"
    gcs = "https://storage.googleapis.com/b/k.pdf?X-Goog-Signature=abc&X-Goog-Expires=900"
    old = "https://h/k.pdf?AWSAccessKeyId=A&Signature=s&Expires=1"
    assert {canonical_url(u, ignore) for u in (azure, gcs, old)} == {
        "https://a.blob.core.windows.net/c/k.pdf",
        "https://storage.googleapis.com/b/k.pdf",
        "https://h/k.pdf",
    }
    assert canonical_url("https://h/k.pdf", ignore) == "https://h/k.pdf"


def test_reuse_key_ignores_a_new_signature_but_not_the_model(tmp_path: object) -> None:
    from pathlib import Path

    from pipeline.manifest import Manifest

    from .conftest import write_csv

    m = write_csv(Path(str(tmp_path)) / "m.csv", [{"file_url": "https://h/a.pdf?sig=1", "question": "Q"}])
    a = Manifest(str(m), load_config(manifest=str(m)))
    b = Manifest(str(m), load_config(manifest=str(m), model="gpt-4-all"))
    key = a.reuse_key_for("https://h/a.pdf?sig=1", "https://h/a.pdf?sig=1 Q")
    assert key == a.reuse_key_for("https://h/a.pdf?sig=2", "https://h/a.pdf?sig=2 Q")
    assert key != a.reuse_key_for("https://h/a.pdf?v=2", "https://h/a.pdf?v=2 Q")
    assert key != b.reuse_key_for("https://h/a.pdf?sig=1", "https://h/a.pdf?sig=1 Q")
