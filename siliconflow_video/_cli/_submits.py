"""The file of ``submit --from-file``: one JSON object per line, each one generation job.

::

    {"model": "Wan-AI/Wan2.2-T2V-A14B", "prompt": "a paper boat", "key": "boat-1"}
    {"model": "Wan-AI/Wan2.2-T2V-A14B", "prompt": "a red fox", "seed": 7}

The fields are ``submit``'s: ``model`` and ``prompt`` (required), ``image_size``,
``negative_prompt``, ``image`` (a path or an http(s) URL) and ``seed``; ``key`` optionally
names the line. A line is known by its key, else by its content (``submit_key_for``), so a
rerun with the same journal submits no line twice. Every line is checked before anything
is submitted: a bad one is a usage error naming its line number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from .._journal import submit_key_for
from ._explain import UsageError
from ._parser import IMAGE_SIZE

__all__ = ["SubmitLine", "read_submit_file"]

_TEXT_FIELDS = ("model", "prompt", "image_size", "negative_prompt", "image", "key")
_FIELDS = frozenset((*_TEXT_FIELDS, "seed"))
_FIX = "fix that line; nothing was submitted"


@attrs.frozen
class SubmitLine:
    """One line of the file: its number (from 1), its dedup key, and submit's keywords."""

    number: int
    key: str
    fields: dict[str, Any]


def _bad(name: str, number: int, problem: str) -> UsageError:
    return UsageError(f"{name} line {number}: {problem}", _FIX)


def _check(name: str, number: int, entry: object) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _bad(name, number, f"expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise _bad(
            name,
            number,
            f"unknown field {unknown[0]!r} (the fields are {', '.join(sorted(_FIELDS))})",
        )
    for field in ("model", "prompt"):
        if field not in entry:
            raise _bad(name, number, f"{field!r} is missing")
    for field in _TEXT_FIELDS:
        value = entry.get(field)
        if field in entry and (not isinstance(value, str) or not value.strip()):
            raise _bad(name, number, f"{field!r} must be a non-empty string")
    size = entry.get("image_size")
    if size is not None and not IMAGE_SIZE.fullmatch(size):
        raise _bad(name, number, f"image_size {size!r} is not a size like 1280x720")
    seed = entry.get("seed")
    if "seed" in entry and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(name, number, f"seed must be a whole number, got {seed!r}")
    return entry


def read_submit_file(name: str) -> list[SubmitLine]:
    """Every line of the file, checked; lines of the same content (no key) are one job."""
    try:
        text = Path(name).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UsageError(
            f"cannot read {name}: {reason or exc}", "check the --from-file path"
        ) from None
    lines: list[SubmitLine] = []
    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError as exc:
            raise _bad(name, number, f"not JSON ({exc})") from None
        entry = _check(name, number, entry)
        key = submit_key_for(entry)
        if key in seen:
            first, before = seen[key]
            if before != entry:
                raise _bad(name, number, f"key {entry['key']!r} is already used by line {first}")
            continue  # the same job twice: submitted (and reported) once
        seen[key] = (number, entry)
        fields = {k: v for k, v in entry.items() if k != "key"}
        lines.append(SubmitLine(number, key, fields))
    if not lines:
        raise UsageError(f"{name} holds no job", "write one JSON object per line")
    return lines
