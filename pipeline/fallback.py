"""A row's walk through its models (``fallback_models``, ``--fallback-model``).

The row asks its model (:meth:`~pipeline.models.ModelRouter.chain`); when that model's
answer, after its own retries, is no-channel / model-not-found, a content filter or
``unreadable_document`` (:data:`~pipeline.models.FALLBACK_ERRORS`), the row asks the
next model. A model the run already knows is unserved is skipped without a request.
Any other failure (a 400, retries exhausted on 5xx) ends the walk: another model
would most likely fail the same way, and paying again is not the fallback's purpose.

The row's outcome is the last model's, with ``model`` (the one that answered, or was
asked last), ``models_tried`` (in order, skipped ones included, ending with ``model``),
``attempts`` summed over every model and ``started_at`` the walk's start. Its cost is
the answering model's alone: failed answers are not priced (as without fallbacks).

With ``--embed`` the document is fetched once, before the first model, and dropped
with the row's outcome (pipeline/embed.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

from .embed import DocumentFetcher
from .errors import RequestError
from .models import FALLBACK_ERRORS, ModelRouter
from .records import Failure, Outcome, Row, Status, make_outcome

SendOne = Callable[[Row], Awaitable[Outcome | None]]


async def answer_row(row: Row, send_one: SendOne, router: ModelRouter,
                     fetcher: DocumentFetcher | None) -> Outcome | None:  # fmt: skip
    """The row's outcome after its models (see the module docstring); None: the run stopped first."""
    started = time.time()
    if fetcher is not None and fetcher.wanted(row):
        try:
            row = dataclasses.replace(row, document=await fetcher.fetch(row))
        except RequestError as e:
            failure = Failure(e.error_type, e.message, e.http_status)
            return make_outcome(row, None, failure=failure, started=started, completed=time.time(), attempts=0,
                                latency=None, cost=None)  # fmt: skip
    chain = router.chain(row)
    if len(chain) == 1 and router.unserved(chain[0]) is None:
        # the common case: nothing to walk. The row goes as it is: a row without a model asks
        # the run's (chain[0]), which every reader of ``model`` takes None for, and a copy of
        # the row (~15 us) plus a request body re-keyed by model were paid for nothing
        return await send_one(row)
    tried: list[str] = []
    attempts = 0
    outcome: Outcome | None = None
    for model in chain:
        tried.append(model)
        asked = dataclasses.replace(row, model=model)
        why = router.unserved(model)
        if why is not None:
            failure = Failure("no_channel", f"model {model!r} has no channel in this run: {why}")
            outcome = make_outcome(asked, None, failure=failure, started=time.time(), completed=time.time(),
                                   attempts=0, latency=None, cost=None)  # fmt: skip
            continue
        outcome = await send_one(asked)
        if outcome is None:
            return None
        attempts += outcome.attempts
        if outcome.status is Status.OK or outcome.error_type not in FALLBACK_ERRORS:
            break
    assert outcome is not None  # a chain holds at least the row's own model
    return dataclasses.replace(outcome, model=tried[-1], models_tried=tuple(tried), attempts=attempts,
                               started_at=started)  # fmt: skip
