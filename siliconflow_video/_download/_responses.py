"""What an answer from the video host means, decided from its status, headers and (for
errors) the start of its body. Nothing here does I/O."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from .._logging import scrub_urls
from ._partfile import Validator

__all__ = [
    "ERROR_BODY_LIMIT",
    "Answer",
    "classify",
    "content_length",
    "error_detail",
    "parse_content_range",
    "range_problem",
    "range_was_complete",
]

#: How much of an error body is read to tell "expired" from other refusals.
ERROR_BODY_LIMIT = 8192
# Header numbers are untrusted: only ASCII digits, and at most 20 of them. \d would take
# any Unicode digit, and int() of more than 4300 digits raises ValueError instead of the
# header being read as unreadable.
_NUMBER = r"([0-9]{1,20})"
_CONTENT_RANGE = re.compile(rf"bytes\s+{_NUMBER}-{_NUMBER}/{_NUMBER}")
_UNSATISFIED_RANGE = re.compile(rf"bytes\s+\*/{_NUMBER}")
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,200})</\1>")
_HTML_TITLE = re.compile(r"<(title|h1)[^>]*>([^<]{1,200})</\1>", re.IGNORECASE)
#: Longest error detail quoted in a message: one short line, never a whole page.
_DETAIL_LIMIT = 120


class Answer(enum.Enum):
    """What to do with an answer, by its status alone."""

    WHOLE = "whole"  #: 200: the whole body, from byte 0
    PARTIAL = "partial"  #: 206: a range, to be checked against the bytes on disk
    RANGE_NOT_SATISFIABLE = "416"  #: 416 to our Range: perhaps every byte is already here
    REFUSED = "refused"  #: 400/403/410: an expired URL, or (400 not saying so) fatal
    RETRY = "retry"  #: 429 and 5xx: a passing fault
    FATAL = "fatal"  #: anything else: retrying will not help


def classify(status: int, *, resuming: bool) -> Answer:
    if status == 200:
        return Answer.WHOLE
    if status == 206:
        return Answer.PARTIAL
    if status == 416 and resuming:
        return Answer.RANGE_NOT_SATISFIABLE
    if status in (400, 403, 410):
        return Answer.REFUSED
    if status == 429 or status >= 500:
        return Answer.RETRY
    return Answer.FATAL


def content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("Content-Length", "").strip()
    # isdigit() alone accepts "²", which int() refuses: see _NUMBER.
    if value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    return None


def parse_content_range(header: str | None) -> tuple[int, int, int]:
    """(first, last, total) of ``bytes first-last/total``; (-1, -1, -1) when unreadable."""
    match = _CONTENT_RANGE.fullmatch((header or "").strip())
    if not match:
        return -1, -1, -1
    first, last, total = (int(g) for g in match.groups())
    return first, last, total


def range_problem(headers: Mapping[str, str], done: int, validator: Validator | None) -> str | None:
    """Why this 206 cannot continue the ``done`` bytes on disk, or None when it can."""
    header = headers.get("Content-Range")
    first, last, total = parse_content_range(header)
    if total < 0:
        return f"a 206 answer with an unreadable Content-Range {header!r}"
    if first != done or last != total - 1:
        return f"asked for bytes from {done}, the host sent {first}-{last} of {total}"
    known = validator.total if validator else None
    if known is not None and total != known:
        return f"the video is now {total} bytes long, it was {known}"
    etag = headers.get("ETag")
    mine = validator.etag if validator else None
    if etag and mine and etag != mine:
        return "the video changed (its ETag differs)"
    length = content_length(headers)
    if length is not None and length != total - first:
        return f"Content-Length {length} does not match Content-Range {header!r}"
    return None


def range_was_complete(headers: Mapping[str, str], done: int, validator: Validator | None) -> bool:
    """Whether a 416 (``bytes */total``) says the ``done`` bytes on disk are the whole
    video."""
    match = _UNSATISFIED_RANGE.fullmatch(headers.get("Content-Range", "").strip())
    total = int(match.group(1)) if match else None
    known = validator.total if validator else None
    return total is not None and total == done and known in (None, total)


def error_detail(body: bytes) -> tuple[str, bool]:
    """A short, credential-free description of an error body, and whether it says the
    URL expired."""
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    says_expired = "expired" in text.lower()
    # Storage hosts answer XML; keep only Code and Message (OSS also echoes the string it
    # signed, which is not for logs).
    fields = dict(_XML_FIELD.findall(text))
    if fields:
        detail = ": ".join(fields[k].strip() for k in ("Code", "Message") if k in fields)
    elif "<html" in text.lower() or "<!doctype" in text.lower():
        # An error page (a gateway's, a CDN's): its title says it all, the markup nothing.
        title = _HTML_TITLE.search(text)
        detail = title.group(2) if title else "an HTML error page"
    else:
        detail = text
    detail = " ".join(detail.split())
    if len(detail) > _DETAIL_LIMIT:
        detail = detail[: _DETAIL_LIMIT - 3].rstrip() + "..."
    return scrub_urls(detail) or "no body", says_expired
