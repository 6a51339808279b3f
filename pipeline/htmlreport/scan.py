"""Where the report's rows come from, read in bounded batches: results.parquet or the journal.

The report never holds a column of every row: each figure is folded batch by
batch into a fixed-size aggregate (counts, sums, bins, the top few rows), and a
figure that needs a global value first (the latency histogram needs p99, the
time bins need the run's span) reads the file again. A pass reads only the
columns it needs, one row group at a time, so memory stays that of one batch
however many rows the folder has.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..arrowutil import numeric

#: Rows per batch of a scan (the size results.parquet's row groups are written in).
BATCH_ROWS = 16_384
#: Low-cardinality strings come in dictionary-encoded: a million copies of one run_id
#: cost 27 MB as plain strings, 4 MB as a dictionary.
DICTIONARY = frozenset({"status", "error_type", "run_id", "model"})


class Scan:
    """The rows of an output folder, from ``path`` (results.parquet) or ``table`` (the journal's latest outcomes)."""

    def __init__(self, path: Path | None = None, table: pa.Table | None = None) -> None:
        self.path = path
        self.table = table
        if path is not None:
            self._file: pq.ParquetFile | None = pq.ParquetFile(path)
            self.schema = self._file.schema_arrow
            self.num_rows = self._file.metadata.num_rows
        else:
            assert table is not None
            self._file = None
            self.schema = table.schema
            self.num_rows = table.num_rows

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    def batches(self, columns: Sequence[str], dictionary: Collection[str] = ()) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(position of the batch's first row, batch) over every row, with those of
        ``columns`` the folder has; ``dictionary``: string columns to read dictionary-encoded."""
        cols = [c for c in dict.fromkeys(columns) if c in self.schema.names]
        offset = 0
        if self.table is not None:
            for batch in self.table.select(cols).to_batches(max_chunksize=BATCH_ROWS):
                yield offset, batch
                offset += batch.num_rows
            return
        assert self.path is not None
        small = [c for c in cols if c in dictionary and pa.types.is_string(self.schema.field(c).type)]
        # A ParquetFile of its own per pass: read_dictionary is fixed when it is opened.
        # pre_buffer off: on, it reads ahead and keeps ~60 MB more at 1M rows for no gain
        # here; one thread: a run's end should not grow an arena per core for this.
        source = pq.ParquetFile(self.path, read_dictionary=small, pre_buffer=False)
        for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=cols, use_threads=False):
            yield offset, batch
            offset += batch.num_rows

    def fetch(self, indices: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The ``columns`` of the rows at positions ``indices`` as dicts, in the order given;
        only the row groups that hold them are read."""
        if not indices:
            return []
        cols = [c for c in columns if c in self.schema.names]
        wanted = np.asarray(indices, dtype=np.int64)
        if self.table is not None:
            return self.table.select(cols).take(numeric(wanted)).to_pylist()
        assert self._file is not None
        f = self._file
        starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
        groups = np.searchsorted(starts, wanted, side="right") - 1
        found: dict[int, dict[str, Any]] = {}
        for g in np.unique(groups):
            mine = wanted[groups == g]
            part = f.read_row_group(int(g), columns=cols).take(numeric((mine - starts[g]).astype(np.int64)))
            found.update(zip(mine.tolist(), part.to_pylist(), strict=True))
        return [found[int(i)] for i in indices]
