"""Progress of a batch on stderr: live rich bars on a terminal, plain log lines otherwise.

Progress never goes to stdout, which holds only results. Every line a display writes goes
through :meth:`Display.write_line`, so log records and error lines print above live bars
instead of tearing them.

Plain lines are INFO records of the ``siliconflow_video.cli`` logger: ``-q`` silences them
like any other log, and the CLI's handler redacts them like any other log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from .._models import EventKind, ProgressEvent, Status, VideoStatus
from ._rows import human_size, printable, write_text

__all__ = ["Display", "DisplayHandler", "LiveDisplay", "PlainDisplay"]

log = logging.getLogger("siliconflow_video.cli")

#: With more ids than this, the live display shows one row per job only while it downloads.
MAX_ROWS = 12
#: Shortest gap between two plain byte-progress lines of one video.
PLAIN_BYTES_EVERY = 2.0


class _Job:
    """What a display knows of one id."""

    __slots__ = ("done", "failed", "last_status", "state", "videos")

    def __init__(self) -> None:
        self.state = "waiting"
        self.last_status: Status | None = None
        self.videos: dict[int, tuple[int, int | None]] = {}  # index -> (done, total)
        self.done = False
        self.failed = False

    @property
    def bytes_done(self) -> int:
        return sum(done for done, _ in self.videos.values())

    @property
    def bytes_total(self) -> int | None:
        totals = [total for _, total in self.videos.values()]
        if not totals or any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)


class Display:
    """Shows nothing but the lines it is asked to write (``-q``); the base of the others.

    Use as a context manager around the batch; :meth:`track` names the ids first. The
    batch's ``progress`` callback is :meth:`event`; ``wait`` feeds :meth:`listener` and
    :meth:`finished`.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.jobs: dict[str, _Job] = {}
        self.downloading = False
        # Counted as ids finish: recounting every job on each finish is O(n^2) per batch.
        self.done_count = 0
        self.failed_count = 0

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop any live rendering; later lines print plainly."""

    def write_line(self, text: str) -> None:
        """Print one line on the display's stream."""
        write_text(self.stream, text)

    def track(self, request_ids: Sequence[str], *, downloading: bool) -> None:
        """Start showing these ids; ``downloading`` says whether videos will be fetched."""
        self.downloading = downloading
        for rid in request_ids:
            self.jobs.setdefault(rid, _Job())

    # -- what happens -------------------------------------------------------------------

    def event(self, event: ProgressEvent) -> None:
        """The ``progress`` callback of ``wait_and_download``."""
        try:
            self._event(event)
        except Exception:  # a display bug must not print tracebacks
            log.debug("the progress display failed on %s", event, exc_info=True)

    def _event(self, event: ProgressEvent) -> None:
        job = self.jobs.setdefault(event.request_id, _Job())
        if event.kind is EventKind.STATUS and event.status is not None:
            self._changed(event.request_id, job, event.status)
        elif event.kind is EventKind.BYTES and event.index is not None:
            job.videos[event.index] = (event.bytes_done, event.bytes_total)
            self._bytes(event.request_id, job, event.index)
        elif event.kind is EventKind.FILE and event.index is not None:
            job.videos[event.index] = (event.bytes_done, event.bytes_total)
            self._file(event.request_id, job, event)
        elif event.kind is EventKind.DONE:
            self.finished(event.request_id, event.error)

    def listener(self, request_id: str) -> Callable[[VideoStatus], None]:
        """A status listener for one id, for waits that download nothing."""
        job = self.jobs.setdefault(request_id, _Job())

        def on_status(status: VideoStatus) -> None:
            self._changed(request_id, job, status.status)

        return on_status

    def _changed(self, request_id: str, job: _Job, status: Status) -> None:
        # Every poll reports the status it read: show only the changes, each once.
        if status is not job.last_status and not job.done:
            job.last_status = status
            self._status(request_id, job, status)

    def finished(self, request_id: str, error: BaseException | None) -> None:
        """The id is done, with ``error`` or without."""
        job = self.jobs.setdefault(request_id, _Job())
        if job.done:
            return
        job.done = True
        job.failed = error is not None
        self.done_count += 1
        self.failed_count += job.failed
        self._done(request_id, job, error)

    # -- how it is shown: overridden by the displays ---------------------------------------

    def _status(self, request_id: str, job: _Job, status: Status) -> None:
        job.state = status.value

    def _bytes(self, request_id: str, job: _Job, index: int) -> None:
        pass

    def _file(self, request_id: str, job: _Job, event: ProgressEvent) -> None:
        pass

    def _done(self, request_id: str, job: _Job, error: BaseException | None) -> None:
        pass


class PlainDisplay(Display):
    """One log line per status change, per finished video and per finished id, and a byte
    count every few seconds while a video downloads: readable in a CI log or a file."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._last_bytes_line: dict[tuple[str, int], float] = {}

    def _status(self, request_id: str, job: _Job, status: Status) -> None:
        super()._status(request_id, job, status)
        rid = printable(request_id)
        if status is Status.SUCCEED and self.downloading:
            log.info("%s: %s, downloading", rid, status.value)
        else:
            log.info("%s: %s", rid, status.value)

    def _bytes(self, request_id: str, job: _Job, index: int) -> None:
        done, total = job.videos[index]
        if total is not None and done >= total:
            return  # the FILE line says it
        now = time.monotonic()
        last = self._last_bytes_line.get((request_id, index))
        if last is not None and now - last < PLAIN_BYTES_EVERY:
            return
        self._last_bytes_line[(request_id, index)] = now
        share = f" ({100 * done // total}%)" if total else ""
        log.info(
            "%s: video %d: %s of %s%s",
            printable(request_id),
            index,
            human_size(done),
            human_size(total),
            share,
        )

    def _file(self, request_id: str, job: _Job, event: ProgressEvent) -> None:
        log.info(
            "%s: video %s saved as %s (%s)",
            printable(request_id),
            event.index,
            event.path,
            human_size(event.bytes_total),
        )

    def _done(self, request_id: str, job: _Job, error: BaseException | None) -> None:
        # The error itself is printed once, in the results and the closing summary.
        log.info("%s: %s", printable(request_id), "done" if error is None else "failed")


class _BytesColumn(ProgressColumn):
    """``1.5/4.0 MiB  2.1 MiB/s`` for a job that is downloading; nothing otherwise."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("bytes"):
            return Text("")
        total = None if task.total is None else int(task.total)
        text = f"{human_size(int(task.completed))}/{human_size(total)}"
        speed = task.finished_speed or task.speed
        if speed and not task.finished:
            text += f"  {human_size(int(speed))}/s"
        return Text(text, style="progress.download")


class LiveDisplay(Display):
    """Rich live bars: a row per job with its state (and bytes once it downloads), and a
    first row counting the jobs done. With many ids, a job's row shows only while its
    videos download."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.console = Console(file=self.stream)
        self.progress = Progress(
            TextColumn("{task.fields[label]}", markup=False),
            TextColumn("{task.fields[state]}", markup=False, style="cyan"),
            BarColumn(bar_width=30),
            _BytesColumn(),
            console=self.console,
            # stdout holds the results: never let the live display capture it.
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
        )
        self._rows: dict[str, TaskID] = {}
        self._overall: TaskID | None = None
        self._live = False

    def __enter__(self) -> LiveDisplay:
        return self

    def close(self) -> None:
        if self._live:
            self._live = False
            self.progress.stop()

    def write_line(self, text: str) -> None:
        if self._live:
            self.console.print(Text(text), soft_wrap=True)
        else:
            write_text(self.stream, text)

    def track(self, request_ids: Sequence[str], *, downloading: bool) -> None:
        super().track(request_ids, downloading=downloading)
        if self._overall is None:
            self._overall = self.progress.add_task(
                "", total=len(self.jobs), label="all jobs", state="", bytes=False
            )
        self._update_overall()
        if len(self.jobs) <= MAX_ROWS:
            for rid in request_ids:
                self._row(rid)
        if not self._live:
            self._live = True
            self.progress.start()

    def _row(self, request_id: str) -> TaskID:
        row = self._rows.get(request_id)
        if row is None:
            job = self.jobs.setdefault(request_id, _Job())
            label = printable(request_id)
            if len(label) > 36:
                label = label[:16] + "…" + label[-16:]
            row = self.progress.add_task("", total=None, label=label, state=job.state, bytes=False)
            self._rows[request_id] = row
        return row

    def _few(self) -> bool:
        return len(self.jobs) <= MAX_ROWS

    def _update_overall(self) -> None:
        if self._overall is None:
            return
        done, failed = self.done_count, self.failed_count
        state = f"{done}/{len(self.jobs)} done" + (f", {failed} failed" if failed else "")
        self.progress.update(self._overall, total=len(self.jobs), completed=done, state=state)

    def _status(self, request_id: str, job: _Job, status: Status) -> None:
        super()._status(request_id, job, status)
        if status is Status.SUCCEED and self.downloading:
            job.state = "downloading"
        if self._few() or request_id in self._rows:
            self.progress.update(self._row(request_id), state=job.state)

    def _bytes(self, request_id: str, job: _Job, index: int) -> None:
        job.state = "downloading"
        self.progress.update(
            self._row(request_id),
            state=job.state,
            total=job.bytes_total,
            completed=job.bytes_done,
            bytes=True,
            visible=True,
        )

    def _file(self, request_id: str, job: _Job, event: ProgressEvent) -> None:
        self._bytes(request_id, job, event.index or 0)

    def _done(self, request_id: str, job: _Job, error: BaseException | None) -> None:
        job.state = "done" if error is None else f"failed: {type(error).__name__}"
        if request_id in self._rows or self._few():
            row = self._row(request_id)
            total = job.bytes_total if job.videos else 1
            completed = job.bytes_done if job.videos else (1 if error is None else 0)
            self.progress.update(
                row,
                state=job.state,
                total=total,
                completed=completed,
                visible=self._few(),
            )
        self._update_overall()


class DisplayHandler(logging.Handler):
    """A logging handler that prints through a display (above live bars, if any)."""

    def __init__(self, display: Display) -> None:
        super().__init__()
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.display.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)
