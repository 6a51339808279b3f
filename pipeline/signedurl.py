"""Signed document URLs: the query parameters that change every night while the document does not.

A presigned S3, GCS or Azure URL carries its signature, its expiry and the
credential's scope in query parameters; tomorrow's manifest carries a new
signature for the same object. Request identity for reuse (``reuse_key``, see
:mod:`pipeline.reuse`) is computed on the URL with those parameters removed
(:func:`canonical_url`); the request itself always goes out with the URL as given.
Names compare case-insensitively.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: What ``[reuse] ignore_query`` defaults to: AWS (SigV4 and the older query form), GCS (V4 and
#: the older form), Azure SAS, and the usual names of hand-rolled signatures and expiries.
DEFAULT_IGNORE_QUERY: tuple[str, ...] = (
    # AWS SigV4 presigned URLs, and SigV2's query form (boto3 without s3v4)
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
    "X-Amz-Signature", "X-Amz-Security-Token", "AWSAccessKeyId", "Signature", "Expires",
    # GCS V4 signed URLs, and the older GoogleAccessId form
    "X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires", "X-Goog-SignedHeaders",
    "X-Goog-Signature", "GoogleAccessId",
    # Azure SAS
    "sv", "ss", "srt", "sp", "se", "st", "spr", "sig", "sr", "skoid", "sktid", "skt", "ske", "sks", "skv",
    "si", "sdd",
    # generic
    "exp", "expires", "token",
)  # fmt: skip


def canonical_url(url: str, ignore: frozenset[str]) -> str:
    """``url`` without the query parameters named in ``ignore`` (lower-cased names); the
    others keep their order. A URL without a query string is returned as it is."""
    if "?" not in url:
        return url
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in ignore]
    return urlunsplit(parts._replace(query=urlencode(kept)))


def ignored_names(names: tuple[str, ...]) -> frozenset[str]:
    """The lower-cased set :func:`canonical_url` takes."""
    return frozenset(n.lower() for n in names)
