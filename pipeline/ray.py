"""docpipe on a Ray Data ``Dataset`` you already hold (``pip install 'docpipe[ray]'``).

>>> import ray.data, pipeline.ray                                    # doctest: +SKIP
>>> ds = ray.data.read_parquet("s3://bucket/manifest.parquet")       # doctest: +SKIP
>>> answered = pipeline.ray.answer(ds, load_config(concurrency=64))  # doctest: +SKIP
>>> answered.write_parquet("s3://bucket/answers/")                  # doctest: +SKIP

The dataset needs ``file_url`` (or ``url``, ``file``) and ``question`` (or ``prompt``)
columns, optionally ``id``, ``model`` and ``form`` (a row's own model and message form),
as a manifest does. The actors HEAD each document for the ``doc_*`` columns
(``doc_meta=False`` to leave them empty) and fetch it with ``embed=True``. Each output row is its input row with
the columns of ``results.parquet`` (request_id first, then the outcome columns:
answer, tokens, status, error_type, ...): a row that failed has ``status == "failed"``
and the reason, it never raises. A bad key or an empty quota stops the whole job:
the batches left raise :class:`~pipeline.errors.RunFatalError` (inside Ray's error).
The limits hold across the cluster (:mod:`pipeline.rayengine.shares`). There is no
journal here: for resume and a results folder, use ``docpipe run --engine ray``.

This module is named like the ``ray`` package; it imports that package absolutely.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, cast

import ray.data

from .config import JobConfig, load_config
from .rayengine.board import new_board
from .rayengine.dataset import Prepare, send
from .rayengine.udf import ROW_INDEX

__all__ = ["answer"]


def answer(ds: ray.data.Dataset, config: JobConfig | None = None, **settings: Any) -> ray.data.Dataset:
    """``ds`` with every row answered (lazily: nothing is sent until the result is consumed).

    ``config``: a :class:`~pipeline.config.JobConfig` (``load_config(...)``); ``settings``:
    JobConfig fields to use instead or on top (``concurrency=64, rpm=600``)."""
    cfg = load_config(**settings) if config is None else config.replace(**settings)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    prepared = ds.map_batches(cast(Any, Prepare(cfg)), batch_format="pyarrow", zero_copy_batch=True)
    answered = send(prepared, cfg, run_id, new_board(), raise_on_stop=True)
    return answered.drop_columns([ROW_INDEX])
