"""Agreement per question between two runs (``docpipe diff``), e.g. two models on one manifest.

Rows are paired as ``diff`` pairs them (``--key content`` for runs with different
models and no ``id`` column: their hashed request_ids differ). For each question,
*compared* counts the pairs where both runs answered (status ``ok``) and *agree* those
whose answers are the same text after trimming surrounding whitespace and ignoring case:
exact agreement, the honest measure for extraction-style questions ("the total", "the
date"); a structured run's typed columns can be compared more loosely by the analyst.
Questions are listed least agreement first (then most rows), at most :data:`TOP_QUESTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .report import JsonRecord

TOP_QUESTIONS = 50


@dataclass(frozen=True, slots=True)
class QuestionAgreement(JsonRecord):
    """How often two runs gave the same answer to one question."""

    question: str
    rows: int  # pairs with this question
    compared: int  # ...of which both runs answered
    agree: int  # ...of which the answers are the same
    share: float | None  # agree / compared; None when nothing could be compared


def agreement(questions: pd.Series, answers_a: pd.Series, answers_b: pd.Series, ok_a: pd.Series,
              ok_b: pd.Series) -> tuple[float | None, tuple[QuestionAgreement, ...]]:  # fmt: skip
    """(overall share, per question) for paired rows; see the module docstring."""
    both = (ok_a.fillna(False).astype(bool) & ok_b.fillna(False).astype(bool)).to_numpy()
    same = (_norm(answers_a) == _norm(answers_b)).fillna(False).astype(bool).to_numpy() & both
    frame = pd.DataFrame({"q": questions.astype("string").fillna("").to_numpy(), "both": both, "same": same})
    grouped = frame.groupby("q", sort=False).agg(rows=("both", "size"), compared=("both", "sum"), agree=("same", "sum"))
    per = [QuestionAgreement(str(q), int(r.rows), int(r.compared), int(r.agree),
                             (int(r.agree) / int(r.compared)) if r.compared else None)
           for q, r in grouped.iterrows()]  # fmt: skip
    per.sort(key=lambda a: (a.share if a.share is not None else 2.0, -a.rows))
    compared = int(both.sum())
    return (int(same.sum()) / compared if compared else None), tuple(per[:TOP_QUESTIONS])


def _norm(s: pd.Series) -> pd.Series:
    return s.astype("string").str.strip().str.lower()


def format_agreement(share: float | None, per: tuple[QuestionAgreement, ...], models: str, n: int = 10) -> list[str]:
    """Lines for ``docpipe diff``'s text output."""
    if share is None:
        return [f"agreement{models}: n/a (no row answered in both runs)"]
    lines = [f"agreement{models}: {share:.1%} of rows answered in both runs give the same answer"]
    for a in per[:n]:
        shown = a.question if len(a.question) <= 60 else a.question[:59] + "…"
        rate = "n/a" if a.share is None else f"{a.share:.0%}"
        lines.append(f"  {rate:>4}  {a.agree}/{a.compared} agree  {shown!r}")
    return lines
