"""The files beside a video's final path, and what the disk says when they fail.

``<name>.part`` holds the bytes received so far, locked (``fcntl.flock``) by the one process
writing it. ``<name>.part.json`` (the sidecar) ties those bytes to the response they came
from. ``<name>.complete.json`` (the completion record) says that ``<name>`` is the complete
video of one request id and index, and how long it is: only a file with such a record is
ever reused. On platforms without ``fcntl`` (Windows) the ``.part`` file is not locked.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import attrs

from .._exceptions import DownloadError
from .._logging import WAITING_FOR, logger, redact_url, scrub_urls

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "RECORDS",
    "Completion",
    "CompletionRecords",
    "Context",
    "Final",
    "PartLock",
    "SidecarRecords",
    "Validator",
    "disk_message",
    "final_state",
    "hash_file",
    "lock_part",
    "make_folder",
    "new_hasher",
    "read_sidecar",
    "remove_leftovers",
    "size_of",
    "write_sidecar",
]

_T = TypeVar("_T")

# Waiting for another process's lock: poll without blocking, backing off to this ceiling.
_LOCK_POLL_FIRST = 0.05
_LOCK_POLL_MAX = 0.5
# O_BINARY: without it Windows would translate line endings in the video bytes.
_PART_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)


@attrs.define
class Context:
    """Who is being downloaded where: what every message needs."""

    url: str
    path: Path
    request_id: str
    index: int

    @property
    def part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def meta(self) -> Path:
        return self.path.with_name(self.path.name + ".part.json")

    def error(
        self,
        message: str,
        *,
        status_code: int | None = None,
        cls: type[DownloadError] = DownloadError,
    ) -> DownloadError:
        return cls(
            scrub_urls(message),
            request_id=self.request_id,
            url=redact_url(self.url),
            path=str(self.path),
            status_code=status_code,
        )

    def disk_error(self, exc: OSError, action: str, target: Path) -> DownloadError:
        return self.error(disk_message(exc, action, target))

    async def disk(self, action: str, target: Path, func: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking file operation in a thread; an OSError becomes a DownloadError."""
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            raise self.disk_error(exc, action, target) from exc


def disk_message(exc: OSError, action: str, target: Path) -> str:
    """One line saying what went wrong with the disk, in the user's terms."""
    folder = target.parent
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM) and action == "read":
        return f"no permission to read {target}"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder} (could not {action} {target.name})"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {target}"
    if code == errno.EROFS:
        return f"cannot write in {folder}: it is on a read-only file system"
    if code in (errno.ENOTDIR, errno.EEXIST) and action == "create the folder":
        return f"cannot use {target} as the destination folder: it or a parent is a file"
    if code == errno.ENOTDIR:
        return f"cannot write in {folder}: a part of that path is a file, not a folder"
    if code == errno.ENAMETOOLONG:
        return f"the file name {target.name!r} is too long for the file system of {folder}"
    reason = exc.strerror or type(exc).__name__
    return f"could not {action} {target}: {reason}"


# --- the final file ------------------------------------------------------------------------


def new_hasher(sha256: bool) -> _Hash | None:
    return hashlib.sha256() if sha256 else None


def hash_file(path: Path, length: int | None, block: int) -> tuple[int, _Hash]:
    """(bytes read, sha256 object) over the first ``length`` bytes of ``path`` (all when
    None), read in blocks so memory stays flat. Runs in a worker thread."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while length is None or size < length:
            data = f.read(block if length is None else min(block, length - size))
            if not data:
                break
            hasher.update(data)
            size += len(data)
    return size, hasher


def size_of(path: Path) -> int | Literal["other"] | None:
    """The size of the regular file (or link to one) at ``path``; "other" when something
    else is there; None when nothing is."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        # Nothing there, or a dangling link: a link is something, and must not be replaced.
        return "other" if os.path.lexists(path) else None
    except OSError:
        return "other"
    return info.st_size if stat.S_ISREG(info.st_mode) else "other"


def make_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)


def remove_leftovers(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)
        # A process killed while writing the sidecar leaves its temporary copy behind.
        p.with_name(p.name + ".tmp").unlink(missing_ok=True)


# --- the completion record ---------------------------------------------------------------


@attrs.frozen
class Completion:
    """What the library records when it has put a video under its final name: whose video
    it is, how long, and the response it came from."""

    request_id: str
    index: int
    size: int
    etag: str | None
    last_modified: str | None


class CompletionRecords(Protocol):
    """Where completion records are kept (beside each file today; in the journal later)."""

    def load(self, path: Path) -> Completion | None:
        """The record for the file at ``path``; None when there is none (or it is torn)."""

    def save(self, path: Path, completion: Completion) -> None:
        """Record ``completion`` for the file at ``path``, atomically."""


#: The destination's hidden folder for what the library keeps about it.
STATE_DIR = ".siliconflow-video"


class SidecarRecords:
    """Each record in ``.siliconflow-video/<name>.complete.json`` in the file's folder."""

    def location(self, path: Path) -> Path:
        return path.parent / STATE_DIR / (path.name + ".complete.json")

    def load(self, path: Path) -> Completion | None:
        try:
            raw = json.loads(self.location(path).read_text(encoding="utf-8"))
            found = Completion(
                raw["request_id"], raw["index"], raw["size"], raw["etag"], raw["last_modified"]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        texts = (found.etag, found.last_modified)
        ok = (
            isinstance(found.request_id, str)
            and all(type(n) is int and n >= 0 for n in (found.index, found.size))
            and all(v is None or isinstance(v, str) for v in texts)
        )
        return found if ok else None

    def save(self, path: Path, completion: Completion) -> None:
        record = self.location(path)
        record.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps(attrs.asdict(completion)), encoding="utf-8")
        os.replace(tmp, record)


#: The records every download uses.
RECORDS: CompletionRecords = SidecarRecords()


class Final(enum.Enum):
    """What is under a video's final name."""

    NOTHING = "nothing"
    COMPLETE = "complete"  #: our complete file, as recorded: reuse it
    STALE = "stale"  #: ours, but no longer its recorded size: fetch it again
    FOREIGN = "foreign"  #: a regular file we did not record as this video
    NOT_A_FILE = "not a file"  #: a folder, a dangling link, a device...


def final_state(
    path: Path, request_id: str, index: int, records: CompletionRecords = RECORDS
) -> tuple[Final, int]:
    """What is at ``path`` for video ``index`` of ``request_id``, and its size (0 when
    there is no regular file). Runs in a worker thread."""
    size = size_of(path)
    if size is None:
        return Final.NOTHING, 0
    if size == "other":
        return Final.NOT_A_FILE, 0
    record = records.load(path)
    if record is None or (record.request_id, record.index) != (request_id, index):
        return Final.FOREIGN, size
    return (Final.COMPLETE if record.size == size else Final.STALE), size


# --- the lock on the .part file ------------------------------------------------------------


class PartLock:
    """The open descriptor of a ``.part`` file, exclusively locked; closing it unlocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._open = True

    def release(self) -> None:
        if self._open:
            self._open = False
            os.close(self.fd)


async def lock_part(ctx: Context, finished: Callable[[], bool]) -> PartLock | None:
    """The ``.part`` file, opened and exclusively locked, or None when ``finished()`` (run
    in a worker thread) says the final file is there (another process completed it)."""
    delay = _LOCK_POLL_FIRST
    while True:
        if await asyncio.to_thread(finished):
            return None
        try:
            fd = os.open(ctx.part, _PART_FLAGS, 0o644)
        except OSError as exc:
            raise ctx.disk_error(exc, "create", ctx.part) from exc
        try:
            told = False
            while not _try_lock(fd):
                if not told:  # once per wait: a display shows it for this id
                    told = True
                    logger.info(
                        "waiting for another process: it is writing %s",
                        ctx.part,
                        extra={WAITING_FOR: ctx.request_id},
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LOCK_POLL_MAX)
            # The holder may have renamed the file we opened to the final name (or removed
            # it) before letting go: then our descriptor no longer is the .part file.
            if _still_at(fd, ctx.part):
                return PartLock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":  # no flock: see the module docstring
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_at(fd: int, path: Path) -> bool:
    mine = os.fstat(fd)
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


# --- the sidecar ---------------------------------------------------------------------------


@attrs.frozen
class Validator:
    """What identifies the response the partial bytes came from (the sidecar's content)."""

    etag: str | None
    last_modified: str | None
    total: int | None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], total: int | None) -> Validator:
        return cls(
            etag=headers.get("ETag"),
            last_modified=headers.get("Last-Modified"),
            total=total,
        )

    def if_range(self) -> str | None:
        # If-Range needs a strong validator: with a weak ETag every answer would be a 200.
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def read_sidecar(meta: Path) -> Validator | None:
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
        total = raw["total"]
        etag = raw["etag"]
        last_modified = raw["last_modified"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or torn: the partial bytes cannot be trusted
    ok = (total is None or (isinstance(total, int) and total >= 0)) and all(
        v is None or isinstance(v, str) for v in (etag, last_modified)
    )
    return Validator(etag, last_modified, total) if ok else None


def write_sidecar(meta: Path, validator: Validator) -> None:
    # Through a temporary name, so a crash never leaves a torn sidecar behind.
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(attrs.asdict(validator)), encoding="utf-8")
    os.replace(tmp, meta)
