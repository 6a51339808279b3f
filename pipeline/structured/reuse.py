"""A schema changed between nights: keep the stored answers that fit the new one.

When the last run in ``OUT`` asked for a different schema (``_run.json``'s
``settings.schema``), before anything is sent:

- rows keyed by a hash (no ``id`` column) have a new ``request_id`` (it covers the
  schema). A row whose old outcome is ``ok`` with an answer that validates against
  the new schema gets that answer again under its new id, with ``attempts = 0``
  (no request; its token and cost columns are those of the stored answer). The
  rest are new rows and are asked.
- rows keyed by an ``id`` column keep their ``request_id``. One whose stored
  answer does not validate against the new schema is *stale*: it is asked again
  as if it had never been answered; the others are kept, and their typed columns
  come from the new schema when ``results.parquet`` is rebuilt.

Limits: only the last run's schema is compared (a folder that changed schema
twice without a complete run in between re-asks more than it must), and a run
stopped before the stale rows were re-asked leaves them ``ok`` for the next run
(whose ``_run.json`` already names the new schema). Reading the old answers takes
the latest outcomes in memory, once, only on the night the schema changed.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..config import JobConfig
from ..records import Outcome, copied_outcome
from ..rundir import RunDir
from .extract import Checker


def changed_schema(run_dir: RunDir, cfg: JobConfig) -> dict[str, Any] | None:
    """The previous run's schema when it differs from ``cfg.schema`` (both set), else None."""
    if cfg.schema is None:
        return None
    info = run_dir.read_run_info() or {}
    old = (info.get("settings") or {}).get("schema")
    return old if isinstance(old, dict) and old != dict(cfg.schema) else None


def reuse(run_dir: RunDir, manifest: Any, cfg: JobConfig, checker: Checker) -> tuple[list[Outcome], set[str]]:
    """(outcomes to journal without a request, ids of stale ok rows to ask again); see the module docstring."""
    old = changed_schema(run_dir, cfg)
    if old is None:
        return [], set()
    latest = run_dir.latest()
    ok = latest.filter(pc.equal(latest["status"], pa.scalar("ok")))
    position = {rid: i for i, rid in enumerate(ok["request_id"].to_pylist())}
    answers = ok["answer"].to_pylist()
    old_ids = None
    if manifest.columns.id is None:
        from ..manifest import Manifest

        old_ids = Manifest(manifest.path, cfg.replace(schema=old))
    reused: list[Outcome] = []
    stale: set[str] = set()
    for batch in manifest.rows():
        for row in batch:
            if row.invalid is not None:
                continue
            old_id = row.request_id if old_ids is None else old_ids.request_id_for(row.content)
            i = position.get(old_id)
            if i is None:
                continue
            valid = checker.check(answers[i]).ok
            if valid and old_id != row.request_id:
                reused.append(copied_outcome(ok.slice(i, 1).to_pylist()[0], row.request_id, row.index))
            elif not valid and old_id == row.request_id:
                stale.add(old_id)
    return reused, stale


def mark_stale(prior: pa.Table, stale: set[str]) -> tuple[pa.Table, pa.Table]:
    """``prior`` (request_id, status) with the stale ids' status "stale" (not counted ok), and
    ``prior`` without them (what a run skips: they are asked again, even without --retry-failed)."""
    if not stale:
        return prior, prior
    is_stale = pc.is_in(prior["request_id"], value_set=pa.array(sorted(stale), pa.string()))
    status = pc.if_else(is_stale, pa.scalar("stale"), prior["status"])
    marked = prior.set_column(prior.schema.get_field_index("status"), "status", status)
    return marked, prior.filter(pc.invert(is_stale))
