"""Rows in, outcome batches out: the ``map_batches`` call both doors of the engine share.

Sizing, and why (measured on two cores, DESIGN.md section 10):

- one actor per share of the limits (:mod:`pipeline.rayengine.shares`), a fixed pool
  (``concurrency=A``) so the shares stay valid, each reserving 0.25 CPU: actors that
  each reserve a whole CPU deadlock beside Ray's own on a small machine, and the
  work is waiting on the network anyway;
- batches of half an actor's concurrency share, two tasks per actor and Ray Data's
  four concurrent batches per task: an actor holds up to four times its share of
  rows, so its pacer always has the next row at hand when a request ends;
- blocks of eight batches: a killed actor's task is retried whole by Ray, so a
  small block bounds what is re-sent.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import ray.data

from ..config import DEFAULT_TEMPLATE, JobConfig
from ..errors import ManifestError
from ..manifest import FORM_ALIASES, MODEL_ALIASES, Columns, _identity, _routes, hash_prefix, request_id
from ..schema import RESERVED_NAMES
from .shares import split
from .udf import CONTENT, FORM, MODEL, ROW_INDEX, SenderUDF

#: CPU each sender actor reserves (see the module docstring).
ACTOR_CPUS = 0.25
#: Tasks one actor runs at once.
ACTOR_TASKS = 2


def batch_rows(cfg: JobConfig) -> int:
    """Rows per batch given to an actor: half its concurrency share (at least 1)."""
    return max(1, -(-split(cfg).per_actor.concurrency // 2))


def send(ds: ray.data.Dataset, cfg: JobConfig, run_id: str, board: Any, *, raise_on_stop: bool,
         models: tuple[str, ...] = ()) -> ray.data.Dataset:  # fmt: skip
    """``ds`` (request_id, file_url, question, the content and row index columns, the model
    and form columns when rows name theirs, any others) with the outcome columns added by
    the sender actors. ``models``: the models the rows name, when known up front."""
    shares = split(cfg)
    kwargs = {"cfg": shares.per_actor, "run_id": run_id, "board": board, "raise_on_stop": raise_on_stop,
              "models": models}  # fmt: skip
    return ds.map_batches(
        SenderUDF,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_rows(cfg),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=shares.actors, max_concurrent_calls_per_actor=ACTOR_TASKS),
        num_cpus=ACTOR_CPUS,
        zero_copy_batch=True,
    )


def block_rows(cfg: JobConfig) -> int:
    return batch_rows(cfg) * 8


def blocks(tables: Sequence[pa.Table], rows: int) -> list[pa.Table]:
    """The rows of ``tables`` re-cut into tables of ``rows`` rows (Ray Data's blocks)."""
    if not tables:
        return []
    whole = pa.concat_tables(tables)
    return [whole.slice(start, rows) for start in range(0, whole.num_rows, rows)]


class Prepare:
    """For :func:`pipeline.ray.answer`: the request_id, content and row index columns of
    a user's dataset, as :class:`~pipeline.manifest.Manifest` makes them for a file."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.prefix = hash_prefix(cfg)
        fields = [f for _, f, _, _ in string.Formatter().parse(cfg.template) if f]
        self.fields = tuple(dict.fromkeys(fields))

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        names = batch.column_names
        url_col = _pick(names, cfg.file_url_column, ("file_url", "url", "file"))
        q_col = _pick(names, cfg.question_column, ("question", "prompt"))
        urls = ["" if v is None else str(v) for v in batch.column(url_col).to_pylist()]
        questions = ["" if v is None else str(v) for v in batch.column(q_col).to_pylist()]
        contents = self._contents(batch, urls, questions)
        id_col = _pick(names, cfg.id_column, ("id",), required=False)
        # a row's model and form, read as a manifest's (pipeline/manifest.py)
        routes = Columns(url_col, q_col, id_col, (), (), _pick(names, cfg.form_column, FORM_ALIASES, required=False),
                         _pick(names, cfg.model_column, MODEL_ALIASES, required=False))  # fmt: skip
        forms, models = _routes(batch, routes, cfg)  # type: ignore[arg-type]
        if id_col is not None:
            ids = [str(v) for v in batch.column(id_col).to_pylist()]
        else:
            ids = [request_id(self.prefix, _identity(c, f, m, cfg.embed))
                   for c, f, m in zip(contents, forms, models, strict=True)]  # fmt: skip
        rest = [n for n in names if n not in (url_col, q_col, "request_id")]
        out = pa.table({"request_id": ids, "file_url": urls, "question": questions})
        for n in rest:
            out = out.append_column(f"input_{n}" if n in RESERVED_NAMES else n, batch.column(n))
        out = out.append_column(ROW_INDEX, pa.nulls(batch.num_rows, pa.int64()))
        out = out.append_column(MODEL, pa.array(models, pa.string()))
        out = out.append_column(FORM, pa.array(forms, pa.string()))
        return out.append_column(CONTENT, pa.array(contents, pa.string()))

    def _contents(self, batch: pa.Table, urls: list[str], questions: list[str]) -> list[str]:
        if self.cfg.template == DEFAULT_TEMPLATE:
            return [f"{u.strip()} {q}" for u, q in zip(urls, questions, strict=True)]
        extra = batch.select([f for f in self.fields if f in batch.column_names]).to_pylist()
        out = []
        for u, q, record in zip(urls, questions, extra, strict=True):
            values = {k: "" if v is None else v for k, v in record.items()}
            values.update(file_url=u.strip(), question=q)
            out.append(self.cfg.template.format_map(values))
        return out


def _pick(names: list[str], wanted: str | None, aliases: tuple[str, ...], *, required: bool = True) -> Any:
    if wanted:
        if wanted not in names:
            raise ManifestError(f"column {wanted!r} not found; columns are {names}")
        return wanted
    lowered = {n.strip().lower(): n for n in names}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    if required:
        raise ManifestError(f"missing column {aliases[0]} (or {', '.join(aliases[1:])}); columns are {names}")
    return None
