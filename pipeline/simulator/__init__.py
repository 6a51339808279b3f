"""Embedded fake OpenAI-compatible gateway (one-api / new-api flavoured).

Used by ``docpipe demo`` (no key, no network), by the test-suite (real HTTP on
127.0.0.1 with a random port) and by ``docpipe bench`` (≈1000 req/s, 1000
concurrent connections). It reproduces the gateway behaviours a client has to
survive (DESIGN.md §1, §8) and answers deterministically, so a test can compute
the expected result of every manifest row with :func:`answer_for`,
:func:`sized_answer` and :func:`usage_for`.

Modules
-------
``kinds``      FaultKind: every misbehaviour, and which are immediate / run-fatal / in the default mix
``config``     SimConfig: the behaviour, one immutable validated value
``answers``    deterministic answers and token usage (pure)
``plan``       Plan: what one attempt gets; directive parsing; seeded per-attempt planning (pure)
``responses``  canned error bodies, HTML pages and response helpers
``completion`` success bodies and SSE event lists, including the 200-shaped faults (pure)
``state``      counters, the RPM window, attempts, /_sim/stats
``gates``      the chat request's gates: auth, body, model, quota, capacity, rpm, response_format, fault
``structured`` schema-shaped answers (response_format or instruction form), their faults, the
               response_format gate; ``structured_kinds`` names the faults
``chat``       the chat handler: gates, then latency / hang, then the planned answer
``handlers``   models, billing, token usage, /_sim control plane
``server``     make_app, serve, SimServer (a thread of its own)

Endpoints (base URL ``http://HOST:PORT/v1``)
--------------------------------------------
``POST /v1/chat/completions``
    Gates, in order (a gate answers or lets the request through):
    auth (401 "无效的令牌") -> body (400) -> model (``no_channel``: 503 "当前分组
    default 下对于模型 M 无可用渠道"; only the ``no_channel_models`` when set; 404
    ``model_not_found`` for the ``missing_models``) -> quota (401 "该令牌额度已用尽" or 403
    ``insufficient_user_quota``) -> capacity (429, empty body, no Retry-After) ->
    rpm (429 with Retry-After) -> response_format (400 naming it, when
    ``response_format = "reject"``) -> fault (directives / random fault mix) -> upstream
    latency -> success (plain JSON or SSE when ``"stream": true``).
``GET /v1/models``
    ``{"object":"list","data":[...]}`` or new-api ``{"success":true,"data":[...]}``.
``GET /v1/dashboard/billing/subscription``, ``GET /v1/dashboard/billing/usage``
    one-api billing (also served without the ``/v1`` prefix, like one-api does).
``GET /api/usage/token/``
    new-api token usage in raw quota units (500000 = $1).
``GET /_sim/stats``, ``POST /_sim/stats/window``, ``GET|POST /_sim/config``, ``POST /_sim/reset``
    Control plane for tests and benchmarks (never checks the API key).
``GET /_sim/bodies``
    The chat request bodies received, in arrival order, when ``record_bodies`` is set.
``GET /files/{name}?bytes=N``
    A document of N deterministic bytes for ``--embed`` (:mod:`.files`, :func:`file_bytes`).
Any other path (e.g. ``POST /chat/completions``, a base URL without ``/v1``)
    aiohttp's plain-text ``404: Not Found``, like a web server that is no gateway.

Every response, errors and 404s included, carries a unique ``X-Oneapi-Request-Id``.

Fault kinds (``fault_kinds`` setting, ``[[sim:fault=KIND]]``)
--------------------------------------------------------------
``429`` JSON body, ``Retry-After: retry_after_s`` (empty body, no header when that is None);
``429_empty`` empty body, no Retry-After; ``500`` JSON error with a code; ``503`` JSON
error without a code; ``502_html`` nginx page; ``524_html`` Cloudflare page; ``hang``
(``hang_s``, longer than any client timeout); ``disconnect``; ``truncated`` (half a
JSON body; a stream that never terminates); ``empty_choices``; ``error_in_200`` (an
error object in a 200 body or as the first stream event); ``stream_cut`` (the idle
cut-off: the stream ends with ``[DONE]`` but no ``finish_reason``; half a body when
not streaming); ``quota_401``, ``quota_403``, ``no_channel`` (run-fatal, never in the
default mix). The default mix is every kind but the run-fatal ones and ``stream_cut``.
The random mix draws a kind uniformly from the ``fault_kinds`` list, so a kind listed
n times is drawn n times as often: ``429`` four times beside eight other kinds makes a
third of the faults 429s with Retry-After.
429s, quota and no-channel are answered at once (no latency, no in-flight slot).

Directives (in the user content; they replace the random fault mix for that request)
------------------------------------------------------------------------------------
``[[sim:status=NNN]]``        every attempt answers HTTP NNN (400..599) with a JSON error
                              body (a row that never succeeds, e.g. ``status=500``).
``[[sim:retry_after=S]]``     attempt 1 gets 429 with ``Retry-After: S``; later attempts succeed.
``[[sim:fault=KIND]]``        attempt 1 gets fault KIND; ``[[sim:fault=KIND*3]]`` attempts 1..3.
``[[sim:unreadable]]``        success, answer = :data:`UNREADABLE_ANSWER`.
``[[sim:finish=length]]``     success with that ``finish_reason`` (any word is accepted).
``[[sim:schema_fault=KIND]]``  a structured answer shaped by KIND (prose, fenced, sentence,
                              violating, truncated) for the first answer; ``KIND*N`` the first N
                              answers of the row's conversation (see :mod:`.structured`).
``[[sim:answer_bytes=N]]``    success whose answer is exactly N UTF-8 bytes
                              (:func:`sized_answer`; 0..256 MiB; streamed in deltas of at
                              most 4096 characters).
Directives combine: ``fault`` / ``retry_after`` first, then the answer ``finish``,
``unreadable`` or ``answer_bytes`` shape. A malformed directive is answered 400 so a
typo never passes silently.

Attempts are counted per distinct (model, content) key since start / reset, and
only for requests that got past the auth, body, model, quota, capacity and RPM gates.
What /_sim/stats counts is described in :mod:`pipeline.simulator.state`.
"""

from __future__ import annotations

from .answers import UNREADABLE_ANSWER, answer_for, sized_answer, usage_for
from .config import SimConfig
from .files import file_bytes
from .kinds import DEFAULT_FAULT_KINDS, FAULT_KINDS, FaultKind
from .plan import Plan, fault_for, plan_attempt
from .server import SimServer, make_app, serve
from .structured import structured_answer_for
from .structured_kinds import SCHEMA_FAULTS, SchemaFault

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "FAULT_KINDS",
    "SCHEMA_FAULTS",
    "UNREADABLE_ANSWER",
    "FaultKind",
    "Plan",
    "SchemaFault",
    "SimConfig",
    "SimServer",
    "answer_for",
    "fault_for",
    "file_bytes",
    "make_app",
    "plan_attempt",
    "serve",
    "sized_answer",
    "structured_answer_for",
    "usage_for",
]
