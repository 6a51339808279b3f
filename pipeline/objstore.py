"""Manifests and output folders in object storage (``s3://bucket/prefix``, and ``gs://``,
``abfs://`` through fsspec when it is installed).

What happens to a remote path, and why (also in the README):

- **Manifest** ``s3://bucket/m.parquet``: copied once, streamed, into the local cache
  (``<cache>/manifests/<hash of the URL, size and mtime>.<ext>``) and read from there:
  a run reads its manifest three times (checks, the run, compaction), and the
  fingerprint that tells a current results file needs a local file's stat.
- **Output** ``s3://bucket/out``: the journal stays on local disk, in
  ``<cache>/out/<hash of the URL>/`` (the folder lock, the once-a-second fsync and
  crash repair need a real file system). At the end of the run ``results.parquet``,
  then ``_report.html``, then ``_run.json`` are uploaded; an object appears whole or
  not at all (S3 completes a multipart upload atomically), so a reader never sees a
  half-written file. A rerun on the same machine resumes from the local journal; on
  another machine (no local journal yet) the bucket's ``results.parquet`` seeds it,
  so rows already ok are skipped there too.
- **Reading** (``summary``, ``diff``, ``validate --out``): :func:`local_view` copies
  ``results.parquet`` and ``_run.json`` into ``<cache>/views/<hash>/``.

``<cache>`` is ``cache_dir`` (``--cache-dir``), else ``$DOCPIPE_CACHE_DIR``, else
``$XDG_CACHE_HOME/docpipe``, else ``~/.cache/docpipe``. Two machines writing the same
``s3://`` out at once is not detected (S3 has no lock): give each its own prefix,
or use ``--engine ray`` from one driver.

Credentials and endpoint: the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``) and ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for
S3-compatible stores (MinIO, Ceph).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ManifestError, StorageError
from .schema import JOURNAL_SCHEMA
from .storage import REPORT_FILE, RESULTS_FILE, RUN_FILE, atomic_write_table, replacing

#: Schemes read through pyarrow's own S3 file system; others go through fsspec.
S3_SCHEMES = ("s3", "s3a")
#: Files of an output folder that are uploaded, in this order (_run.json last: it says the run ended).
UPLOADED = (RESULTS_FILE, REPORT_FILE, RUN_FILE)
_COPY_BLOCK = 8 << 20


def is_remote(path: str | os.PathLike[str] | None) -> bool:
    """True for ``scheme://...`` paths other than ``file://``."""
    if path is None:
        return False
    text = os.fspath(path)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1 and scheme != "file"


def endpoint_url() -> str | None:
    """The S3 endpoint the AWS variables name (the service-specific one first), or None for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow file system, path inside it) for a remote URL."""
    import pyarrow.fs as pafs

    parts = urlsplit(url)
    if not parts.netloc:
        raise StorageError(f"{url}: no bucket in the URL")
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    if parts.scheme in S3_SCHEMES:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        kwargs: dict[str, Any] = {"endpoint_override": endpoint_url()}
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), path
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"{url}: {parts.scheme}:// needs fsspec and its {parts.scheme} driver installed") from None
    try:
        fs = fsspec.filesystem(parts.scheme)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{url}: no fsspec driver for {parts.scheme}://: {e}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path  # type: ignore[abstract]  # stubs mark it abstract


def cache_root(cache_dir: str | None = None) -> Path:
    """Where remote outs keep their journal and remote manifests their local copy."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("DOCPIPE_CACHE_DIR"):
        return Path(os.environ["DOCPIPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "docpipe"


def _key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=10).hexdigest()


def local_out(url: str, cache_dir: str | None = None) -> Path:
    """The local folder that holds the journal of the remote out ``url``."""
    return cache_root(cache_dir) / "out" / _key(url.rstrip("/"))


def _info(fs: Any, path: str, url: str) -> Any:
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise StorageError(f"{url}: {_short(e)}") from None
    return info if info.type == pafs.FileType.File else None


def download(fs: Any, path: str, target: Path, url: str) -> None:
    """Copy one object to ``target`` atomically (streamed: memory holds one block)."""
    try:
        with replacing(target) as tmp, fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
    except OSError as e:
        raise StorageError(f"{url}: cannot download: {_short(e)}") from None


def upload(source: Path, fs: Any, path: str, url: str) -> None:
    """Copy a local file to one object; the object appears when the upload completes."""
    try:
        with open(source, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, _COPY_BLOCK)
    except OSError as e:
        raise StorageError(f"{url}: cannot upload {source.name}: {_short(e)}") from None


def localize_manifest(url: str, cache_dir: str | None = None) -> str:
    """A local copy of the remote manifest ``url`` (reused while size and mtime are the same)."""
    fs, path = filesystem(url)
    info = _info(fs, path, url)
    if info is None:
        raise ManifestError(f"{url}: manifest not found")
    suffix = Path(path).suffix.lower()
    target = cache_root(cache_dir) / "manifests" / f"{_key(f'{url}|{info.size}|{info.mtime_ns}')}{suffix}"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        download(fs, path, target, url)
    return str(target)


def pull(url: str, local: Path, *, seed_journal: bool) -> bool:
    """Copy the remote out's results.parquet and _run.json into ``local``; with
    ``seed_journal`` (a local folder without a journal) also turn the results into a
    journal part, so a run there resumes. Returns False when the out holds no results."""
    fs, root = filesystem(url)
    results = f"{root}/{RESULTS_FILE}"
    if _info(fs, results, url) is None:
        return False
    local.mkdir(parents=True, exist_ok=True)
    download(fs, results, local / RESULTS_FILE, url)
    if _info(fs, f"{root}/{RUN_FILE}", url) is not None:
        download(fs, f"{root}/{RUN_FILE}", local / RUN_FILE, url)
    if seed_journal:
        _seed_journal(local)
    return True


def _seed_journal(local: Path) -> None:
    """``_journal/part-000000001.parquet`` from results.parquet: the latest outcome of
    every row, as the folded journal a finished local run leaves."""
    from .journal import journal_files
    from .storage import JOURNAL_DIR

    journal = local / JOURNAL_DIR
    journal.mkdir(parents=True, exist_ok=True)
    if journal_files(journal):
        return
    pf = pq.ParquetFile(local / RESULTS_FILE)
    names = set(pf.schema_arrow.names)

    def batches() -> Any:
        offset = 0
        for batch in pf.iter_batches(batch_size=16384):
            cols: list[Any] = []
            for field in JOURNAL_SCHEMA:
                if field.name == "row_index":  # journal-only: the position is informative, ids match rows
                    cols.append(pa.array(range(offset, offset + batch.num_rows), pa.int64()))
                elif field.name in names:
                    cols.append(batch.column(field.name).cast(field.type))
                else:
                    cols.append(pa.nulls(batch.num_rows, field.type))
            offset += batch.num_rows
            yield pa.RecordBatch.from_arrays(cols, schema=JOURNAL_SCHEMA)

    atomic_write_table(journal / "part-000000001.parquet", batches(), JOURNAL_SCHEMA)


def push(local: Path, url: str) -> None:
    """Upload the finished folder's files to the remote out (results first, _run.json last)."""
    fs, root = filesystem(url)
    for name in UPLOADED:
        source = local / name
        if source.exists():
            upload(source, fs, f"{root}/{name}", url)


def local_view(path: str, cache_dir: str | None = None) -> str:
    """A local folder to read the out ``path`` from: ``path`` itself when it is local,
    else a fresh copy of its results.parquet and _run.json (and a journal seeded from them)."""
    if not is_remote(path):
        return path
    view = cache_root(cache_dir) / "views" / _key(path.rstrip("/"))
    shutil.rmtree(view, ignore_errors=True)
    if not pull(path, view, seed_journal=True):
        raise StorageError(f"{path}: no {RESULTS_FILE} there")
    return str(view)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
