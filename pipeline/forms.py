"""Message forms: how a row's document reaches the model (``[request] form``, ``--form``).

The gateway reads a document in any of these user messages:

- ``inline``: one text, ``"<file_url> <question>"`` (the template); what gpt-4o-all
  documents, and the default;
- ``image_url``: the OpenAI vision parts, ``[{"type": "text", "text": question},
  {"type": "image_url", "image_url": {"url": file_url}}]``;
- ``file``: the text part and ``{"type": "file", "file": {"file_url": file_url}}``
  (Claude and Gemini read PDFs this way through the same gateway);
- ``auto``: ``image_url`` when the URL's extension names an image (``.png``, ``.jpg``, ...)
  or, with ``--embed``, when the fetched Content-Type is ``image/*``; otherwise ``inline``,
  or ``file`` with ``--embed`` (a gateway that cannot reach the URL cannot read it inline).

With ``--embed`` (pipeline/embed.py) the URL is replaced by the document's bytes as a
``data:`` URL: in the ``image_url`` part, or as ``{"type": "file", "file": {"filename",
"file_data"}}``. The text part is the question; with a template other than the default
it is the template applied (the user chose what it says). A manifest's ``form`` column
overrides the run's form for its row (empty: the run's).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from .records import Document, Row


class Form(StrEnum):
    """A message form (the module docstring says what each sends)."""

    INLINE = "inline"
    IMAGE_URL = "image_url"
    FILE = "file"
    AUTO = "auto"


#: Extensions ``auto`` sends as images (the formats vision models take).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic"})


def parse_form(text: str) -> Form | None:
    """The form a manifest cell names (case and spaces ignored), or None when it names none."""
    try:
        return Form(text.strip().lower())
    except ValueError:
        return None


def is_image(url: str, content_type: str | None = None) -> bool:
    """Whether ``url`` (or the Content-Type it was served with) is an image."""
    if content_type is not None and content_type.split(";")[0].strip().lower().startswith("image/"):
        return True
    return PurePosixPath(urlsplit(url).path).suffix.lower() in IMAGE_EXTENSIONS


def resolve(form: str, url: str, document: Document | None = None) -> Form:
    """The form a row is sent in: ``auto`` decided by the URL (and the fetched document's type)."""
    chosen = Form(form)
    if chosen is not Form.AUTO:
        return chosen
    if is_image(url, document.content_type if document is not None else None):
        return Form.IMAGE_URL
    return Form.FILE if document is not None else Form.INLINE


def user_content(row: Row, *, default_template: bool, run_form: str) -> str | list[dict[str, Any]]:
    """The user message's ``content`` for ``row`` in its form (``run_form`` when the row names
    none; a string for ``inline``)."""
    url = row.file_url.strip()
    form = resolve(row.form or run_form, url, row.document)
    if form is Form.INLINE:
        return row.content
    text = {"type": "text", "text": row.question if default_template else row.content}
    doc = row.document
    if form is Form.IMAGE_URL:
        return [text, {"type": "image_url", "image_url": {"url": doc.data_url if doc else url}}]
    if doc is not None:
        return [text, {"type": "file", "file": {"filename": doc.filename, "file_data": doc.data_url}}]
    return [text, {"type": "file", "file": {"file_url": url}}]
