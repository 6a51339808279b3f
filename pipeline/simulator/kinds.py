"""The fault kinds: each way a one-api / new-api gateway (or the proxy in front of
it) answers instead of a normal completion. Kept apart from the plan so that the
configuration can validate against them without importing the planner."""

from __future__ import annotations

from enum import StrEnum


class FaultKind(StrEnum):
    """One misbehaviour; the value is the name used in settings, directives and stats."""

    RATE_LIMITED = "429"  # JSON body; Retry-After from SimConfig.retry_after_s (None: empty body, no header)
    RATE_LIMITED_EMPTY = "429_empty"  # empty body, no Retry-After: what their limiters send
    SERVER_ERROR = "500"  # JSON error with a code
    BAD_GATEWAY_HTML = "502_html"  # nginx HTML page
    UNAVAILABLE = "503"  # JSON error without a code (one-api often leaves it out)
    TIMEOUT_HTML = "524_html"  # Cloudflare HTML page
    HANG = "hang"  # no answer for SimConfig.hang_s (longer than any client timeout)
    DISCONNECT = "disconnect"  # connection closed, no response
    TRUNCATED = "truncated"  # 200, half a JSON body (stream: the chunked body never ends)
    EMPTY_CHOICES = "empty_choices"  # 200, "choices": []
    ERROR_IN_200 = "error_in_200"  # 200 whose body (or first stream event) is an error object
    STREAM_CUT = "stream_cut"  # the idle cut-off: stream ends with [DONE] but no finish_reason
    QUOTA_401 = "quota_401"  # 401 "该令牌额度已用尽" (token quota used up)
    QUOTA_403 = "quota_403"  # 403 code insufficient_user_quota (balance too low)
    NO_CHANNEL = "no_channel"  # 503 "当前分组 default 下对于模型 M 无可用渠道"


FAULT_KINDS: tuple[str, ...] = tuple(k.value for k in FaultKind)

#: Answered by the gateway itself, before any upstream call: no latency, no in-flight slot.
IMMEDIATE: frozenset[FaultKind] = frozenset(
    {
        FaultKind.RATE_LIMITED,
        FaultKind.RATE_LIMITED_EMPTY,
        FaultKind.QUOTA_401,
        FaultKind.QUOTA_403,
        FaultKind.NO_CHANNEL,
    }
)

#: They stop a whole run (DESIGN.md §6), so a random mix never includes them by default.
RUN_FATAL: frozenset[FaultKind] = frozenset({FaultKind.QUOTA_401, FaultKind.QUOTA_403, FaultKind.NO_CHANNEL})

#: The default random mix: every transient fault. stream_cut is left out because for a
#: non-streaming request it is the same as truncated.
DEFAULT_FAULT_KINDS: tuple[str, ...] = tuple(
    k.value for k in FaultKind if k not in RUN_FATAL and k is not FaultKind.STREAM_CUT
)
