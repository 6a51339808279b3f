"""Deterministic answers and token usage: pure functions of the request, so a test can
compute the expected result of every manifest row.

The answer depends on the requested model and on the *last user message* content
only (system and earlier messages are ignored), so adding a system prompt does not
change it. For the OpenAI vision list form, the content is the text parts and image
URLs joined with one space, in order; a ``file`` part contributes its ``file_url`` or,
embedded, its ``file_data``.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

UNREADABLE_ANSWER = "抱歉，我无法访问该文件。I cannot access the file at that URL."


def key_digest(model: str, content: str) -> bytes:
    """64-bit digest of (model, content): the request's identity for answers and attempts."""
    return hashlib.blake2b(f"{model}\x00{content}".encode("utf-8", "surrogatepass"), digest_size=8).digest()


def answer_from_digest(model: str, content: str, digest: bytes) -> str:
    """:func:`answer_for` with the digest already computed (the server has it)."""
    h = digest.hex()
    # Multi-byte "—" so clients are exercised with non-ASCII text and byte-based token counts.
    return f"Answer {h[:8]} — {model[:24]} read {len(content)} chars; the total is {int(h[8:12], 16)} units."


def answer_for(model: str, content: str) -> str:
    """Deterministic answer for the user content (see the module doc for what "content" is).

    Rows with a ``[[sim:unreadable]]`` directive get :data:`UNREADABLE_ANSWER` instead and
    rows with ``[[sim:answer_bytes=N]]`` get :func:`sized_answer`.
    """
    return answer_from_digest(model, content, key_digest(model, content))


def sized_answer(model: str, content: str, nbytes: int) -> str:
    """Deterministic answer of exactly ``nbytes`` UTF-8 bytes (``[[sim:answer_bytes=N]]``).

    The normal answer repeated (so it holds multi-byte characters too), cut to the
    size; a character the cut splits is replaced by ASCII dots. Cheap at 20 MB.
    """
    block = (answer_for(model, content) + "\n").encode()
    raw = (block * (nbytes // len(block) + 1))[:nbytes]
    text = raw.decode("utf-8", "ignore")  # drops only a split character at the very end
    return text + "." * (nbytes - len(text.encode()))


def text_tokens(text: str) -> int:
    """Tokens the simulator charges for a text: ceil(utf-8 bytes / 4)."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


def usage_for(messages: list[dict[str, Any]], answer: str) -> tuple[int, int]:
    """(prompt_tokens, completion_tokens) the simulator reports.

    prompt: per message 4 + ceil(utf-8 bytes / 4); for list-form content the
    bytes of all text parts are summed before the ceil and each image_url part
    adds 85.  completion: ceil(utf-8 bytes of the answer / 4).
    """
    prompt = 0
    for msg in messages:
        content = msg.get("content")
        prompt += 4
        if isinstance(content, str):
            prompt += text_tokens(content)
        elif isinstance(content, list):
            nbytes = 0
            for part in content:
                if not isinstance(part, dict):
                    continue
                ptype = part.get("type")
                if ptype == "text":
                    nbytes += len(str(part.get("text", "")).encode("utf-8", "surrogatepass"))
                elif ptype == "image_url":
                    prompt += 85
            prompt += math.ceil(nbytes / 4)
    return prompt, text_tokens(answer)


def user_content(messages: list[Any]) -> str:
    """Content string of the last user message (last message if none is 'user').

    Raises ValueError for shapes a gateway would reject (answered 400).
    """
    msg = _last_user(messages)
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = (_part_text(part) for part in content)
        return " ".join(t for t in texts if t is not None)
    if content is None:
        return ""
    raise ValueError("message content must be a string or a list of parts")


def _last_user(messages: list[Any]) -> dict[str, Any]:
    # Checked from the end like a gateway reading the newest turn; each message seen must be an object.
    for m in reversed(messages):
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        if m.get("role") == "user":
            return m
    last: dict[str, Any] = messages[-1]  # every message was checked to be a dict above
    return last


def _part_text(part: Any) -> str | None:
    """Text a content part contributes, None for part types that carry none."""
    if not isinstance(part, dict):
        raise ValueError("content parts must be objects")
    ptype = part.get("type")
    if ptype == "text":
        return str(part.get("text", ""))
    if ptype == "image_url":
        iu = part.get("image_url")
        return str(iu.get("url", "") if isinstance(iu, dict) else iu)
    if ptype == "file":
        f = part.get("file")
        return str(f.get("file_url") or f.get("file_data") or "") if isinstance(f, dict) else None
    return None
