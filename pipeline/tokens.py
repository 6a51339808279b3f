"""Token estimates for budgets, TPM limits and gateways that send no usage.

A deliberately cheap rule (UTF-8 bytes / 4, plus a per-message overhead) rather
than a tokenizer dependency: ``gpt-4o-all`` bills the fetched file's tokens too,
which no client-side tokenizer can see, so an exact count of our own text would
be false precision. Estimates are corrected by the usage the gateway reports.
"""

from __future__ import annotations

MESSAGE_OVERHEAD = 4


def estimate_text(text: str | None) -> int:
    if not text:
        return 0
    return -(-len(text.encode("utf-8")) // 4)


def estimate_prompt(content: str, system: str | None = None) -> int:
    """Prompt tokens of one request: the user message and the optional system message."""
    total = estimate_text(content) + MESSAGE_OVERHEAD
    if system:
        total += estimate_text(system) + MESSAGE_OVERHEAD
    return total
