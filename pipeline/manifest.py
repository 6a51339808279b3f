"""Reading and validating manifests (CSV or Parquet), streamed in record batches.

Decisions a user may want to know (also in the README):

- CSV columns are all read as text, so ``007`` stays ``007`` in the output and a
  late block never disagrees with the types guessed from an early one.
- ``file_url`` may be called ``url`` or ``file``; ``question`` may be called
  ``prompt``; ``id`` is optional. A job file can name other columns.
- A passthrough column whose name collides with an output column (``status``,
  ``answer``, ...) is renamed ``input_<name>``.
- ``request_id`` is the ``id`` column when present (it must be unique), otherwise
  a hash of what is sent (model, system message, parameters, message content),
  so tomorrow's run of a grown manifest recognises today's finished rows.
- Row numbers in messages count data rows from 1 (the header is not a row);
  column numbers count from 1.
- A CSV must be UTF-8: the first pass decodes every column, so a file saved as
  latin-1 is refused before anything is sent, naming the row and the column.
- ``file_url`` and ``question`` land in the results as they are in the manifest,
  spaces included. The request carries the URL without surrounding whitespace
  (what was checked is what is sent), so a URL padded with spaces is the same
  request, and has the same ``request_id``, as the unpadded one.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .arrowutil import int_scalar, numeric, string_scalar, strings
from .config import DEFAULT_TEMPLATE, JobConfig
from .errors import ManifestError
from .forms import Form, parse_form
from .idset import IdIndex, hash_ids
from .records import Row
from .schema import RESERVED_NAMES
from .signedurl import canonical_url, ignored_names

FORM_ALIASES = ("form",)
MODEL_ALIASES = ("model",)
URL_ALIASES = ("file_url", "url", "file")
QUESTION_ALIASES = ("question", "prompt")
ID_ALIASES = ("id",)

#: Output columns a passthrough column must not shadow.
RESERVED = RESERVED_NAMES

_CSV_BLOCK = 1 << 20


def detect_format(path: str, override: str | None = None) -> str:
    if override:
        if override not in ("csv", "parquet"):
            raise ManifestError(f"{path}: unknown manifest format {override!r} (csv or parquet)")
        return override
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".txt"):
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ManifestError(
        f"{path}: cannot tell the manifest format from the extension {suffix!r}; use .csv or .parquet, or pass --format"
    )


def _pick(names: list[str], wanted: str | None, aliases: tuple[str, ...], what: str, path: str) -> str | None:
    if wanted:
        if wanted not in names:
            raise ManifestError(f"{path}: column {wanted!r} (for {what}) not found; columns are {names}")
        return wanted
    lowered = {n.strip().lower(): n for n in names}
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    return None


@dataclass(frozen=True)
class Columns:
    file_url: str
    question: str
    id: str | None
    passthrough: tuple[str, ...]  # manifest names, in manifest order
    output_names: tuple[str, ...]  # what each passthrough column is called in the results
    form: str | None = None  # a row's message form (pipeline/forms.py); also passed through
    model: str | None = None  # a row's model (pipeline/models.py); also passed through (as input_model)


class Manifest:
    """A validated manifest; iterate it as many times as needed (run, compaction)."""

    def __init__(self, path: str, cfg: JobConfig) -> None:
        self.path = str(path)
        self.cfg = cfg
        self.format = detect_format(self.path, cfg.manifest_format)
        p = Path(self.path)
        if not p.exists():
            raise ManifestError(f"{self.path}: manifest not found")
        if not p.is_file():
            raise ManifestError(f"{self.path}: not a file")
        if p.stat().st_size == 0:
            raise ManifestError(f"{self.path}: manifest is empty")
        self.schema = self._read_schema()
        names = list(self.schema.names)
        url = _pick(names, cfg.file_url_column, URL_ALIASES, "file_url", self.path)
        question = _pick(names, cfg.question_column, QUESTION_ALIASES, "question", self.path)
        missing = [w for w, c in (("file_url (or url, file)", url), ("question (or prompt)", question)) if c is None]
        if missing:
            raise ManifestError(f"{self.path}: missing column {' and '.join(missing)}; columns are {names}")
        assert url is not None and question is not None
        ident = _pick(names, cfg.id_column, ID_ALIASES, "id", self.path)
        passthrough = tuple(n for n in names if n not in (url, question))
        output = tuple(f"input_{n}" if n in RESERVED else n for n in passthrough)
        form = _pick(names, cfg.form_column, FORM_ALIASES, "form", self.path)
        model = _pick(names, cfg.model_column, MODEL_ALIASES, "model", self.path)
        self.columns = Columns(url, question, ident, passthrough, output, form, model)
        self._template_fields = self._check_template(cfg.template, names)
        self._hash_prefix = hash_prefix(cfg)
        self._ignore_query = ignored_names(cfg.ignore_query)
        self.num_rows = self._prepass()
        if self.num_rows == 0:
            raise ManifestError(f"{self.path}: manifest has a header but no rows")
        self.id_hashes: np.ndarray[Any, Any] | None = None  # see rows(); compaction takes them

    # -- opening -------------------------------------------------------------

    def _read_schema(self) -> pa.Schema:
        try:
            if self.format == "parquet":
                return pq.read_schema(self.path)
            import pyarrow.csv as pacsv  # only CSV manifests need it (import time counts)

            reader = pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK))
            schema = reader.schema
            reader.close()
            return schema
        except (pa.ArrowInvalid, OSError) as e:
            raise ManifestError(f"{self.path}: cannot read as {self.format}: {_short(e)}") from None

    def _check_template(self, template: str, names: list[str]) -> tuple[str, ...]:
        if template == DEFAULT_TEMPLATE:
            return ()
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise ManifestError(f"prompt template {template!r} is malformed: {e}") from None
        known = set(names) | {"file_url", "question"}
        for f in fields:
            if f == "" or f not in known:
                raise ManifestError(
                    f"prompt template names column {{{f}}}, which {self.path} does not have; columns are {names}"
                )
        return tuple(dict.fromkeys(fields))

    def _raw_batches(self, columns: list[str] | None = None, size: int = 0) -> Iterator[pa.RecordBatch]:
        size = size or self.cfg.batch_rows
        try:
            if self.format == "parquet":
                pf = pq.ParquetFile(self.path, pre_buffer=False)
                yield from pf.iter_batches(batch_size=size, columns=columns, use_threads=False)
                return
            import pyarrow.csv as pacsv  # only CSV manifests need it (import time counts)

            reader = pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in self.schema.names},
                    include_columns=columns,
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                for start in range(0, batch.num_rows, size):
                    yield batch.slice(start, size)
        except (pa.ArrowInvalid, OSError) as e:
            where = self._locate_bad_text() if self.format == "csv" and "UTF8" in str(e) else None
            if where is not None:
                raise ManifestError(f"{self.path}: {where} is not UTF-8 text; save the file as UTF-8") from None
            raise ManifestError(f"{self.path}: cannot read as {self.format}: {_short(e)}") from None

    def _locate_bad_text(self) -> str | None:
        """'row R, column C ('name')' (both from 1) of the first value that is not
        UTF-8, or None. Only on the error path: it reads the file again as bytes."""
        import pyarrow.csv as pacsv  # only CSV manifests need it

        names = list(self.schema.names)
        try:
            reader = pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}),
            )
            offset = 0
            for batch in reader:
                found = [(row, col) for col in range(batch.num_columns)
                         if (row := _first_invalid_utf8(batch.column(col))) is not None]  # fmt: skip
                if found:
                    row, col = min(found)
                    return f"row {offset + row + 1}, column {col + 1} ({names[col]!r})"
                offset += batch.num_rows
        except (pa.ArrowInvalid, OSError, IndexError):
            return None
        return None

    def _prepass(self) -> int:
        """Count rows, prove the whole file decodes, and check ids are unique, before
        a single request is sent (a decode error at row 900 000 must not end a night)."""
        c = self.columns
        if self.format == "parquet" and c.id is None:
            return pq.ParquetFile(self.path).metadata.num_rows
        # a CSV is decoded whole (every column), so text that is not UTF-8 stops us here
        cols = [c.id] if c.id and self.format == "parquet" else None
        count = 0
        ids: list[pa.Array[Any]] = []
        for batch in self._raw_batches(cols):
            count += batch.num_rows
            if c.id:
                ids.append(batch.column(c.id).cast(pa.string()))
        if c.id and ids:
            import pyarrow.compute as pc  # only with ids: 0.1-0.3 s before the first request

            all_ids = pa.chunked_array(ids)
            empty = string_scalar("")
            filled = all_ids.fill_null(empty)
            first = pc.index(filled, empty).as_py()  # -1 when no id is null or empty
            if first is not None and first >= 0:
                raise ManifestError(f"{self.path}: column {c.id!r} is empty at row {first + 1}")
            if pc.count_distinct(all_ids).as_py() != len(all_ids):
                counts = pc.value_counts(all_ids)
                repeated = pc.filter(counts, pc.greater(counts.field("counts"), int_scalar(1)))
                value = repeated[0]["values"].as_py()
                rows = [(i or 0) + 1 for i in pc.indices_nonzero(pc.equal(all_ids, value)).to_pylist()[:5]]
                raise ManifestError(
                    f"{self.path}: duplicate id {value!r} in column {c.id!r} at rows {rows} "
                    f"({len(repeated)} ids repeat)"
                )
        return count

    # -- iteration -----------------------------------------------------------

    def _content(self, url: str, question: str, record: dict[str, object] | None) -> str:
        if record is None:
            return f"{url} {question}"
        values = dict(record)
        values["file_url"] = url
        values["question"] = question
        return self.cfg.template.format_map({k: "" if v is None else v for k, v in values.items()})

    def request_id_for(self, content: str) -> str:
        return request_id(self._hash_prefix, content)

    def reuse_key_for(self, url: str, content: str) -> int:
        """The request's identity for reuse (pipeline/reuse.py): the request_id's hash with the
        signed URL parameters of ``[reuse] ignore_query`` left out of ``url``, as a signed 64-bit int."""
        if "?" in url:
            canonical = canonical_url(url, self._ignore_query)
            if canonical != url:
                content = content.replace(url, canonical)
        digest = hashlib.blake2b(self._hash_prefix + content.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "little", signed=True)

    def views(self, first: int | None = None) -> Iterator[tuple[pa.RecordBatch, pa.Array[Any], list[str]]]:
        """Yield (batch, request_ids, contents) for every manifest row in scope
        (after --shard and --limit), in manifest order; ``first``: see :meth:`rows`."""
        c = self.columns
        limit = self.cfg.limit
        seen = 0
        index = 0
        shard = self.cfg.shard
        for batch in _first_cut(self._raw_batches(), first):
            if limit is not None and seen >= limit:
                return
            urls = _as_text(batch.column(c.file_url))
            questions = _as_text(batch.column(c.question))
            extra = (
                batch.select([f for f in self._template_fields if f in batch.schema.names]).to_pylist()
                if self._template_fields
                else None
            )
            contents = [
                self._content(u.strip(), q, extra[i] if extra is not None else None)
                for i, (u, q) in enumerate(zip(urls, questions, strict=True))
            ]
            ids = batch.column(c.id).cast(pa.string()) if c.id else _hashed_ids(self, batch, contents)
            indices = numeric(np.arange(index, index + batch.num_rows, dtype=np.int64))
            index += batch.num_rows
            batch = batch.append_column("__row_index", indices)
            if shard is not None:
                k, n = shard
                keep = numeric(np.array([_shard_of(str(i), n) == k - 1 for i in ids.to_pylist()], dtype=np.bool_))
                batch, ids = batch.filter(keep), ids.filter(keep)
                contents = [x for x, m in zip(contents, keep.to_pylist(), strict=True) if m]
            if limit is not None and seen + batch.num_rows > limit:
                take = limit - seen
                batch, ids, contents = batch.slice(0, take), ids.slice(0, take), contents[:take]
            seen += batch.num_rows
            if batch.num_rows:
                yield batch, ids, contents

    def rows(self, skip: IdIndex | None = None, first: int | None = None) -> Iterator[list[Row]]:
        """Batches of rows to process, minus those whose request_id is in ``skip``; ``first`` cuts the first batch
        after that many rows, so a run's first requests wait for those only (1000 rows: 30-70 ms, issue 10). A pass
        to the end leaves each in-scope row's id hash, in order, in ``id_hashes`` for compaction (~3 s a 1M rows)."""
        c = self.columns
        hashes = [np.empty(0, dtype=np.int64)]
        for batch, ids, contents in self.views(first):
            hashes.append(hash_ids(id_list := [str(i) for i in ids.to_pylist()]))
            positions: Any = range(batch.num_rows)
            if skip is not None and len(skip):
                keep = ~skip.contains(hashes[-1])
                if not keep.any():
                    continue
                positions = np.flatnonzero(keep).tolist()
            urls = _as_text(batch.column(c.file_url))
            questions = _as_text(batch.column(c.question))
            row_index = batch.column("__row_index").to_pylist()
            forms, models = _routes(batch, c, self.cfg)
            embed = self.cfg.embed
            out = []
            for i in positions:
                url, q = urls[i], questions[i]
                out.append(
                    Row(
                        index=row_index[i],
                        request_id=id_list[i],
                        file_url=url,
                        question=q,
                        content=contents[i],
                        invalid=_invalid(url, q) or _invalid_form(forms[i]),
                        reuse_key=self.reuse_key_for(url.strip(), _identity(contents[i], forms[i], models[i], embed)),
                        model=models[i],
                        form=forms[i],
                    )
                )
            yield out
        self.id_hashes = np.concatenate(hashes)


def scoped_batches(m: Manifest, size: int) -> Iterator[pa.RecordBatch]:
    """The in-scope rows' columns as read (after --limit and --shard), in batches of
    up to ``size`` rows; no content or request_id is computed unless --shard needs them."""
    if m.cfg.shard is not None:
        for batch, _ids, _c in m.views():
            yield batch
        return
    left = m.cfg.limit
    for batch in m._raw_batches(size=size):
        if left is not None:
            if left <= 0:
                return
            batch = batch.slice(0, left)
            left -= batch.num_rows
        yield batch


def _first_cut(batches: Iterator[pa.RecordBatch], first: int | None) -> Iterator[pa.RecordBatch]:
    """``batches`` with the first one cut in two after ``first`` rows (None: as they come)."""
    for batch in batches:
        if first is not None and 0 < first < batch.num_rows:
            yield batch.slice(0, first)
            yield batch.slice(first)
        else:
            yield batch
        break
    yield from batches


def hash_prefix(cfg: JobConfig) -> bytes:
    """What a hashed request_id covers besides the message content: model, system
    message, parameters, whether a template is used, the answer schema."""
    hashed: list[Any] = [cfg.model, cfg.system, dict(sorted(cfg.params.items())), cfg.template != DEFAULT_TEMPLATE]
    if cfg.schema is not None:  # a different answer schema is a different request (ids without one unchanged)
        hashed.append(cfg.schema)
    return orjson.dumps(hashed, option=orjson.OPT_SORT_KEYS) + b"\x1e"


def request_id(prefix: bytes, content: str) -> str:
    """The hashed request_id of a message ``content`` under :func:`hash_prefix`."""
    return hashlib.blake2b(prefix + content.encode("utf-8"), digest_size=16).hexdigest()


def _as_text(col: pa.Array[Any] | pa.ChunkedArray[Any]) -> list[str]:
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return ["" if v is None else v for v in col.to_pylist()]


#: Any whitespace (``\s`` of a str pattern is str.isspace()); a regex, not a loop over characters.
_SPACE = re.compile(r"\s")


def _invalid(url: str, question: str) -> str | None:
    u = url.strip()
    if not u:
        return "file_url is empty"
    if _SPACE.search(u):
        return f"file_url contains a space: {u[:80]!r}"
    if u.lower().startswith("s3://"):  # a private document: presigned before each attempt (pipeline/presign.py)
        parts = urlsplit(u)
        if not parts.netloc or not parts.path.strip("/"):
            return f"file_url is not an s3://bucket/key URL: {u[:80]!r}"
    elif not u.lower().startswith(("http://", "https://")) or not urlsplit(u).netloc:
        return f"file_url is not an http(s) URL: {u[:80]!r}"
    if not question.strip():
        return "question is empty"
    return None


def _routes(batch: pa.RecordBatch, c: Columns, cfg: JobConfig) -> tuple[list[str], list[str | None]]:
    """Each row's form (as given: "auto" stays, a bad cell stays as written) and model
    (None: the run's), from the form and model columns when the manifest has them."""
    forms = [cfg.form] * batch.num_rows
    if c.form is not None:
        forms = [f.strip().lower() or cfg.form for f in _as_text(batch.column(c.form))]
    models: list[str | None] = [None] * batch.num_rows
    if c.model is not None:
        models = [
            None if not m.strip() or m.strip() == cfg.model else m.strip() for m in _as_text(batch.column(c.model))
        ]
    return forms, models


def _hashed_ids(m: Manifest, batch: pa.RecordBatch, contents: list[str]) -> pa.Array[Any]:
    """The request_ids of a batch of a manifest without an id column."""
    c, cfg = m.columns, m.cfg
    if c.form is None and c.model is None and cfg.form == "inline":
        return strings([m.request_id_for(x) for x in contents])
    forms, models = _routes(batch, c, cfg)
    return strings([m.request_id_for(_identity(x, f, model, cfg.embed))
                    for x, f, model in zip(contents, forms, models, strict=True)])  # fmt: skip


def _identity(content: str, form: str, model: str | None, embed: bool) -> str:
    """What request_id hashes besides the prefix: the content, plus the form and the row's
    model when they are not today's inline text to the run's model (so those ids are unchanged)."""
    if form == "inline" and model is None:
        return content
    return content + "\x1f" + orjson.dumps([form, model, embed]).decode()


def manifest_models(m: Manifest) -> set[str]:
    """Every model a row of the manifest names (the model column's distinct values)."""
    column = m.columns.model
    if column is None:
        return set()
    import pyarrow.compute as pc  # only with a model column

    found: set[str] = set()
    for batch in m._raw_batches([column] if m.format == "parquet" else None):
        values = pc.unique(batch.column(column).cast(pa.string())).to_pylist()
        found.update(v.strip() for v in values if v is not None and v.strip())
    return found


def _invalid_form(form: str) -> str | None:
    if parse_form(form) is None:
        return f"form {form[:40]!r} is not one of {', '.join(f.value for f in Form)}"
    return None


def _first_invalid_utf8(col: pa.Array[Any]) -> int | None:
    """Index of the first value of a binary column that is not UTF-8, or None.

    A cast to string checks a whole array at C speed but does not say where it
    failed, so bisect with casts of slices: log2(n) casts."""
    if _is_utf8(col):
        return None
    lo, hi = 0, len(col)  # the first bad value is in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _is_utf8(col.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


def _is_utf8(col: pa.Array[Any]) -> bool:
    try:
        col.cast(pa.string())
    except pa.ArrowInvalid:
        return False
    return True


def _shard_of(request_id: str, n: int) -> int:
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
