"""What stdout shows: one row per id, as text or as a JSON object, and the text helpers
every part of the command line prints through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

import attrs

from .._exceptions import ForeignFileError, JobFailedError, SiliconFlowError
from .._models import Outcome, Status, StoredFile, VideoStatus
from ._explain import explain

__all__ = [
    "Row",
    "failure_words",
    "human_duration",
    "human_size",
    "human_speed",
    "kept_files",
    "printable",
    "shorten",
    "write_text",
]


def human_size(size: int | None) -> str:
    """``3.0 MiB`` and the like; ``?`` when unknown."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_speed(bytes_per_second: float) -> str:
    """``2.1 MiB/s`` and the like."""
    return f"{human_size(int(bytes_per_second))}/s"


def human_duration(seconds: float) -> str:
    """``0:42``, ``12:05`` or ``1:02:03``: a clock's way, as curl and aria2 show times."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle (``1a2b3c…9f0e``): both ends of an
    id are what a person compares."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def failure_words(
    error: BaseException,
    request_id: str,
    explain_error: Callable[[BaseException], tuple[str, str]],
) -> str:
    """Why an id failed, in one line without the id (its row names it already):
    ``job failed: <reason>`` for a job SiliconFlow failed, else what went wrong."""
    if isinstance(error, JobFailedError):
        return f"job failed: {error.reason or 'no reason given'}"
    what = explain_error(error)[0]
    quoted = repr(request_id)
    what = what.replace(f"job {quoted} ", "job ").replace(f" {quoted}", "")
    return " ".join(what.split())


def printable(text: str) -> str:
    """``text`` itself, or its repr when it holds control characters (ids are untrusted)."""
    return text if text.isprintable() else repr(text)


def write_text(stream: TextIO, text: str) -> None:
    """Write one line, replacing what the stream's encoding cannot hold."""
    try:
        stream.write(text + "\n")
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding) + "\n")
    stream.flush()


def kept_files(outcome: Outcome) -> tuple[tuple[str, ...], SiliconFlowError | None]:
    """``--no-clobber``'s reading of an outcome: the files kept in place of its videos and
    no error when every failed video failed for a file already there; else none kept and
    the first other error (a missing video is a failure, whatever its siblings did)."""
    errors = outcome.errors or ((outcome.error,) if outcome.error is not None else ())
    kept = tuple(e.path for e in errors if isinstance(e, ForeignFileError) and e.path)
    others = [e for e in errors if not (isinstance(e, ForeignFileError) and e.path)]
    if others:
        return (), others[0]
    return kept, None


@attrs.frozen
class Row:
    """What the CLI prints for one id."""

    request_id: str
    status: str | None = None
    reason: str | None = None
    paths: tuple[str, ...] = ()
    sha256: tuple[str | None, ...] = ()  # one per path; None where not computed
    error: BaseException | None = None
    urls: tuple[str, ...] | None = None  # None: a download row, which has no "urls" key
    files: tuple[StoredFile, ...] = ()
    #: Files kept as they were, their videos not downloaded (``--no-clobber``).
    skipped: tuple[str, ...] = ()

    @classmethod
    def from_outcome(cls, outcome: Outcome, *, no_clobber: bool = False) -> Row:
        """The row of one id; with ``no_clobber``, files already at its videos' names that
        were not downloaded as those videos make the id skipped, not failed, but only when
        that is every failed video's trouble: any other failure fails the id."""
        status = outcome.status
        error = outcome.error
        skipped: tuple[str, ...] = ()
        if no_clobber:
            skipped, error = kept_files(outcome)
        return cls(
            request_id=outcome.request_id,
            status=status.status.value if status else None,
            reason=(status.reason or None) if status else None,
            paths=tuple(f.location for f in outcome.files),
            sha256=tuple(f.sha256 for f in outcome.files),
            error=error,
            files=outcome.files,
            skipped=skipped,
        )

    @classmethod
    def from_status(
        cls, request_id: str, status: VideoStatus | None, error: BaseException | None
    ) -> Row:
        if error is None and status is not None and status.status is Status.FAILED:
            error = JobFailedError(request_id, status.reason)
        return cls(
            request_id=request_id,
            status=status.status.value if status else None,
            reason=(status.reason or None) if status else None,
            error=error,
            urls=tuple(status.urls) if status else (),
        )

    def to_json(self, base_url: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status,
            "reason": self.reason,
            "paths": list(self.paths),
            "sha256": list(self.sha256),
            "files": [
                {
                    "path": f.location,
                    "index": f.index,
                    "size": f.size,
                    "sha256": f.sha256,
                    "reused": f.reused,
                }
                for f in self.files
            ],
            "error": None,
        }
        if self.skipped:
            data["skipped"] = list(self.skipped)
        if self.urls is not None:
            data["urls"] = list(self.urls)
        if self.error is not None:
            data["error"] = {
                "type": type(self.error).__name__,
                "message": explain(self.error, base_url)[0],
            }
        return data

    def to_text(self, width: int, base_url: str) -> str:
        parts = [printable(self.request_id).ljust(width), (self.status or "-").ljust(10)]
        if isinstance(self.error, JobFailedError):
            parts.append(f"reason: {self.error.reason or 'none given'}")
        else:
            parts += list(self.paths)
            parts += [f"skipped: {path} already exists (kept as it is)" for path in self.skipped]
            if self.urls:
                parts += list(self.urls)
            if self.error is not None:
                parts.append(f"error: {explain(self.error, base_url)[0]}")
        return "  ".join(parts).rstrip()
