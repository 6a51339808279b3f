"""Night over night: what changed from an earlier folder to this one, as ``docpipe diff`` says it.

The figures are those of ``docpipe diff EARLIER THIS`` (:func:`pipeline.summary.diff`,
rows paired by ``request_id``): answers changed, new and gone rows, status changes,
and the token, cost and failure-rate deltas. Computed with a pyarrow join rather than
pandas so a million-row pair stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import UsageError
from ..journal import latest_per_id
from ..storage import RESULTS_FILE
from . import arrow

_COLUMNS = [
    "request_id",
    "file_url",
    "answer",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_usd",
]
EXAMPLES = 5


@dataclass(frozen=True)
class Delta:
    """A figure in the earlier run (a), in this one (b), and b - a."""

    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class Comparison:
    """What changed from folder ``a`` (earlier) to folder ``b`` (this report's)."""

    a: str
    b: str
    rows_a: int
    rows_b: int
    common: int
    changed: int
    new: int
    gone: int
    status_changes: dict[str, int]
    tokens: Delta
    cost_usd: Delta
    failure_rate: Delta
    examples: tuple[dict[str, Any], ...]

    @property
    def unchanged(self) -> int:
        return self.common - self.changed


def _read(folder: Path) -> pa.Table:
    path = folder / RESULTS_FILE if folder.is_dir() else folder
    if not path.exists():
        raise UsageError(f"{path}: not found; is {folder} a docpipe output folder?")
    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in _COLUMNS if c in names])
    except (OSError, pa.ArrowInvalid) as e:
        raise UsageError(f"{path}: cannot read: {e}") from None


def _failure_rate(t: pa.Table) -> float | None:
    return (t.num_rows - arrow.count_true(arrow.equal(t["status"], "ok"))) / t.num_rows if t.num_rows else None


def _cost(t: pa.Table) -> float | None:
    if "cost_usd" not in t.column_names or t["cost_usd"].null_count == t.num_rows:
        return None
    return float(pc.sum(t["cost_usd"]).as_py() or 0.0)


def _tokens(t: pa.Table) -> int:
    return int(pc.sum(t["total_tokens"]).as_py() or 0) if "total_tokens" in t.column_names else 0


def _side(t: pa.Table, suffix: str) -> pa.Table:
    """One row per request_id (the last, as diff keeps), its columns renamed with ``suffix``."""
    if pc.count_distinct(t["request_id"]).as_py() != t.num_rows:
        t = latest_per_id(t)
    keep: dict[str, Any] = {
        "request_id": t["request_id"],
        f"present{suffix}": pa.array([True] * t.num_rows, pa.bool_()),
    }
    for name in ("answer", "status"):
        keep[f"{name}{suffix}"] = t[name] if name in t.column_names else pa.nulls(t.num_rows, pa.string())
    return pa.table(keep)


def _with_questions(folder: Path, examples: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The examples with their question, read for those few ids only (a million questions
    would double the memory of the comparison for five lines of the page)."""
    path = folder / RESULTS_FILE if folder.is_dir() else folder
    ids = [e["request_id"] for e in examples]
    if not ids or "question" not in pq.read_schema(path).names:
        return tuple({**e, "question": None} for e in examples)
    found = pq.read_table(path, columns=["request_id", "question"], filters=[("request_id", "in", ids)])
    questions = dict(zip(found["request_id"].to_pylist(), found["question"].to_pylist(), strict=True))
    return tuple({**e, "question": questions.get(e["request_id"])} for e in examples)


def compare(earlier: Path, this: Path) -> Comparison:
    """Diff ``earlier`` -> ``this`` (see the module docstring)."""
    ta, tb = _read(earlier), _read(this)
    both = _side(ta, "_a").join(_side(tb, "_b"), keys="request_id", join_type="full outer")
    in_a: Any = arrow.filled(both["present_a"])
    in_b: Any = arrow.filled(both["present_b"])
    common = both.filter(pc.and_(in_a, in_b))
    ans_a: Any = common["answer_a"]
    ans_b: Any = common["answer_b"]
    same: Any = pc.or_(arrow.filled(pc.equal(ans_a, ans_b)), pc.and_(pc.is_null(ans_a), pc.is_null(ans_b)))
    changed = common.filter(pc.invert(same))
    status_a: Any = common["status_a"]
    moved = common.filter(arrow.filled(pc.not_equal(status_a, common["status_b"]), True))
    transitions = pc.binary_join_element_wise(
        arrow.filled(moved["status_a"], "None"), arrow.filled(moved["status_b"], "None"), "->"
    )
    examples = changed.sort_by("request_id").slice(0, EXAMPLES)
    return Comparison(
        a=str(earlier),
        b=str(this),
        rows_a=ta.num_rows,
        rows_b=tb.num_rows,
        common=common.num_rows,
        changed=changed.num_rows,
        new=arrow.count_true(pc.and_(in_b, pc.invert(in_a))),
        gone=arrow.count_true(pc.and_(in_a, pc.invert(in_b))),
        status_changes={str(k): n for k, n in arrow.value_counts(transitions).items()},
        tokens=Delta(_tokens(ta), _tokens(tb)),
        cost_usd=Delta(_cost(ta), _cost(tb)),
        failure_rate=Delta(_failure_rate(ta), _failure_rate(tb)),
        examples=_with_questions(this, examples.select(["request_id", "answer_a", "answer_b"]).to_pylist()),
    )
