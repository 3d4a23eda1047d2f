"""Progress of a batch on stderr: a live rich board on a terminal, plain log lines otherwise.

Progress never goes to stdout, which holds only results. Every line a display writes goes
through :meth:`Display.write_line`, so log records and error lines print above the live
board instead of tearing it.

Plain lines are INFO records of the ``siliconflow_video.cli`` logger: ``-q`` silences them
like any other log, and the CLI's handler redacts them like any other log.

The live board says, in words, what each id is doing now: checking its status, queued or
running at SiliconFlow, waiting for a download slot, downloading (bytes and speed, or
stalled), done, reused (already complete) or failed and why. Above the rows, a header sums
the batch up: ids done, failed and still waiting, bytes, overall speed, elapsed time and,
once every size is known, an ETA. Speeds are measured over the last few seconds of a
monotonic clock, so a transfer that stops shows its speed falling and then "stalled",
never its last rate frozen.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._config import DEFAULT_BASE_URL
from .._exceptions import ForeignFileError, WaitTimeoutError
from .._logging import WAITING_FOR
from .._models import EventKind, ProgressEvent, Status, StoredFile, VideoStatus
from ._explain import explain
from ._rows import (
    failure_words,
    human_duration,
    human_size,
    human_speed,
    printable,
    shorten,
    write_text,
)

__all__ = ["Display", "DisplayHandler", "LiveDisplay", "Meter", "PlainDisplay"]

log = logging.getLogger("siliconflow_video.cli")

Clock = Callable[[], float]

#: The most rows the live board shows; with more ids, a summary line covers the rest.
MAX_ROWS = 12
#: Shortest gap between two plain byte-progress lines of one video.
PLAIN_BYTES_EVERY = 2.0
#: Speeds are the bytes that arrived in this many recent seconds.
SPEED_WINDOW = 5.0
#: Samples closer together than this are merged: a fast host reports every few KiB.
SAMPLE_GRAIN = 0.1
#: No speed is shown before a transfer has been watched this long: one piece is no rate.
MIN_SPAN = 0.5
#: A transfer that got no byte for this long is shown as "stalled", not with a speed.
STALLED_AFTER = 3.0
#: No ETA before the overall speed has been measured this long.
ETA_AFTER = 2.0
#: The longest id shown whole; longer ones are cut in the middle.
ID_WIDTH = 24
BAR_WIDTH = 10


class Meter:
    """Bytes moved over a recent window of a monotonic clock.

    The rate is the bytes that arrived in the last ``window`` seconds divided by those
    seconds (fewer at the start), measured up to *now*: when bytes stop, it falls to zero
    within ``window``, however fast they came before.
    """

    def __init__(self, window: float = SPEED_WINDOW) -> None:
        self.window = window
        self.total = 0
        self.started: float | None = None
        self.last_bytes_at: float | None = None
        self._samples: deque[tuple[float, int]] = deque()

    def mark(self, now: float) -> None:
        """A transfer starts (or resumes after a pause): measure from here."""
        if self.started is None:
            self.started = now
        idle = self.last_bytes_at is None or now - self.last_bytes_at >= self.window
        if not self._samples or idle:
            # Nothing moved for a whole window: the old samples only say "zero".
            self._samples = deque([(now, self.total)])
            self.last_bytes_at = now

    def add(self, now: float, count: int) -> None:
        """``count`` more bytes arrived at ``now``."""
        if self.started is None:
            self.mark(now)
        if count <= 0:
            return
        self.total += count
        self.last_bytes_at = now
        samples = self._samples
        if len(samples) >= 2 and now - samples[-2][0] < SAMPLE_GRAIN:
            samples[-1] = (now, self.total)
        else:
            samples.append((now, self.total))

    def rate(self, now: float) -> float | None:
        """Bytes per second over the window; None until there is enough to tell."""
        samples = self._samples
        if not samples:
            return None
        cutoff = now - self.window
        while len(samples) >= 2 and samples[1][0] <= cutoff:
            samples.popleft()
        base_time, base_bytes = samples[0]
        span = now - max(base_time, cutoff)
        if now - base_time < MIN_SPAN or span <= 0:
            return None
        return (samples[-1][1] - base_bytes) / span

    def idle(self, now: float) -> float:
        """Seconds since the last byte (or since the transfer started)."""
        return 0.0 if self.last_bytes_at is None else now - self.last_bytes_at


class _Video:
    """What a display knows of one video of an id."""

    __slots__ = ("complete", "done", "total")

    def __init__(self, done: int, total: int | None) -> None:
        self.done = done
        self.total = total
        self.complete = False


class _Job:
    """What a display knows of one id."""

    __slots__ = (
        "done",
        "error",
        "failed",
        "files",
        "last_status",
        "meter",
        "order",
        "skipped",
        "videos",
        "waiting_since",
    )

    def __init__(self, order: int) -> None:
        self.order = order
        self.last_status: Status | None = None
        self.videos: dict[int, _Video] = {}
        self.done = False
        self.failed = False
        self.error: BaseException | None = None
        self.files: tuple[StoredFile, ...] | None = None
        self.skipped: tuple[str, ...] = ()
        #: Since when another process holds a lock this id's download needs (None: not).
        self.waiting_since: float | None = None
        self.meter = Meter()

    @property
    def bytes_done(self) -> int:
        return sum(v.done for v in self.videos.values())

    @property
    def bytes_total(self) -> int | None:
        totals = [v.total for v in self.videos.values()]
        if not totals or any(t is None for t in totals):
            return None
        return sum(t for t in totals if t is not None)

    @property
    def transferring(self) -> bool:
        """Some video has bytes and is not complete yet."""
        return any(not v.complete for v in self.videos.values())

    @property
    def reused(self) -> int:
        """How many of its files were already complete on disk (known once it is done)."""
        return sum(f.reused for f in self.files or ())


class Display:
    """Shows nothing but the lines it is asked to write (``-q``); the base of the others.

    Use as a context manager around the batch; :meth:`track` names the ids first. The
    batch's ``progress`` callback is :meth:`event`; ``wait`` feeds :meth:`listener` and
    :meth:`finished`. ``clock`` is a monotonic clock (tests drive their own).
    """

    def __init__(self, stream: TextIO | None = None, *, clock: Clock = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.jobs: dict[str, _Job] = {}
        self.downloading = False
        #: --no-clobber: a file already at a video's name makes its id skipped, not failed.
        self.keep_foreign = False
        # Counted as ids finish: recounting every job on each finish is O(n^2) per batch.
        self.done_count = 0
        self.failed_count = 0
        #: (what happened, what to do) for an error; the CLI sets its own (with its base URL).
        self.explain: Callable[[BaseException], tuple[str, str]] = lambda exc: explain(
            exc, DEFAULT_BASE_URL
        )

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop any live rendering; later lines print plainly."""

    def write_line(self, text: str) -> None:
        """Print one line on the display's stream."""
        write_text(self.stream, text)

    def print_above(self, text: str) -> bool:
        """Print a line of results above a live board, if one is showing (when stdout and
        stderr are one terminal, a line written straight to stdout would be drawn over);
        False when there is none, and the caller writes it itself."""
        return False

    def job(self, request_id: str) -> _Job:
        job = self.jobs.get(request_id)
        if job is None:
            job = self.jobs[request_id] = _Job(len(self.jobs))
        return job

    def track(self, request_ids: Sequence[str], *, downloading: bool) -> None:
        """Start showing these ids; ``downloading`` says whether videos will be fetched."""
        self.downloading = downloading
        for rid in request_ids:
            self.job(rid)

    # -- what happens -------------------------------------------------------------------

    def event(self, event: ProgressEvent) -> None:
        """The ``progress`` callback of ``wait_and_download``."""
        try:
            self._event(event)
        except Exception:  # a display bug must not print tracebacks
            log.debug("the progress display failed on %s", event, exc_info=True)

    def _event(self, event: ProgressEvent) -> None:
        job = self.job(event.request_id)
        job.waiting_since = None  # any news of the id: the other process let go
        if event.kind is EventKind.STATUS and event.status is not None:
            self._changed(event.request_id, job, event.status)
        elif event.kind in (EventKind.BYTES, EventKind.FILE) and event.index is not None:
            video = job.videos.get(event.index)
            if video is None:
                video = job.videos[event.index] = _Video(event.bytes_done, event.bytes_total)
                moved = 0  # the first report is where this transfer starts: see _moved
                job.meter.mark(self.clock())
                self._started(job)
            else:
                moved = event.bytes_done - video.done
                video.done, video.total = event.bytes_done, event.bytes_total
            if moved > 0:
                self._moved(job, moved)
            if event.kind is EventKind.FILE:
                video.complete = True
                self._file(event.request_id, job, event)
            else:
                self._bytes(event.request_id, job, event.index)
        elif event.kind is EventKind.DONE:
            self.finished(event.request_id, event.error)

    def waiting(self, request_id: str) -> bool:
        """A download of the id waits for another process (its ``.part`` lock); True when
        the display shows that itself, False when the log line should say it."""
        return False

    def listener(self, request_id: str) -> Callable[[VideoStatus], None]:
        """A status listener for one id, for waits that download nothing."""

        def on_status(status: VideoStatus) -> None:
            self._changed(request_id, self.job(request_id), status.status)

        return on_status

    def _changed(self, request_id: str, job: _Job, status: Status) -> None:
        # Every poll reports the status it read: show only the changes, each once.
        if status is not job.last_status and not job.done:
            job.last_status = status
            self._status(request_id, job, status)

    def finished(
        self,
        request_id: str,
        error: BaseException | None,
        files: Iterable[StoredFile] | None = None,
        *,
        skipped: Sequence[str] = (),
    ) -> None:
        """The id is done, with ``error`` or without; ``files`` (its outcome's) tell which
        videos were reused, ``skipped`` which files were kept in place of their videos
        (``--no-clobber``). They may come after the batch's own "done" event."""
        job = self.job(request_id)
        if files is not None:
            job.files = tuple(files)
        if self.keep_foreign and isinstance(error, ForeignFileError) and error.path:
            # The batch's "done" event carries only the first failed video's error: the
            # row's own call (every failed video weighed, see kept_files) decides.
            return
        if skipped and not job.done:
            job.skipped = tuple(skipped)
        if job.done:
            return
        job.done = True
        job.failed = error is not None
        job.error = error
        self.done_count += 1
        self.failed_count += job.failed
        self._done(request_id, job, error)

    # -- how it is shown: overridden by the displays ---------------------------------------

    def _status(self, request_id: str, job: _Job, status: Status) -> None:
        pass

    def _started(self, job: _Job) -> None:
        pass

    def _moved(self, job: _Job, count: int) -> None:
        job.meter.add(self.clock(), count)

    def _bytes(self, request_id: str, job: _Job, index: int) -> None:
        pass

    def _file(self, request_id: str, job: _Job, event: ProgressEvent) -> None:
        pass

    def _done(self, request_id: str, job: _Job, error: BaseException | None) -> None:
        pass


class PlainDisplay(Display):
    """One log line per status change, per finished video and per finished id, and a byte
    count every few seconds while a video downloads: readable in a CI log or a file."""

    def __init__(self, stream: TextIO | None = None, *, clock: Clock = time.monotonic) -> None:
        super().__init__(stream, clock=clock)
        self._last_bytes_line: dict[tuple[str, int], float] = {}

    def _status(self, request_id: str, job: _Job, status: Status) -> None:
        rid = printable(request_id)
        if status is Status.SUCCEED and self.downloading:
            log.info("%s: %s, downloading", rid, status.value)
        else:
            log.info("%s: %s", rid, status.value)

    def _bytes(self, request_id: str, job: _Job, index: int) -> None:
        video = job.videos[index]
        done, total = video.done, video.total
        if total is not None and done >= total:
            return  # the FILE line says it
        now = self.clock()
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
            event.location or event.path,
            human_size(event.bytes_total),
        )

    def _done(self, request_id: str, job: _Job, error: BaseException | None) -> None:
        # The error itself is printed once, in the results and the closing summary.
        if job.skipped:
            words = f"skipped: {', '.join(job.skipped)} already exists (kept as it is)"
        elif isinstance(error, WaitTimeoutError):
            words = "timed out (--timeout)"
        else:
            words = "done" if error is None else "failed"
        log.info("%s: %s", printable(request_id), words)


# -- the live board ---------------------------------------------------------------------

#: What a row can say, in the order rows are picked when not every id fits.
DOWNLOADING = "downloading"
SLOT = "waiting for a download slot"
RUNNING = "running at SiliconFlow"
QUEUED = "queued at SiliconFlow"
SUCCEEDED = "succeeded"
CHECKING = "checking status"
FAILED = "failed"
DONE = "done"
REUSED = "reused (already complete)"
SKIPPED = "skipped (file already there)"
LOCKED = "waiting for another process"

#: The order rows are picked in when not every id fits, and the summary line's order.
PRIORITY = (
    DOWNLOADING,
    LOCKED,
    SLOT,
    RUNNING,
    SUCCEEDED,
    QUEUED,
    CHECKING,
    FAILED,
    SKIPPED,
    REUSED,
    DONE,
)
#: The states of an id that is finished.
FINISHED = (FAILED, SKIPPED, REUSED, DONE)
#: How each state is named in the summary line.
SHORT = {
    DOWNLOADING: "downloading",
    SLOT: "waiting for a slot",
    RUNNING: "running",
    SUCCEEDED: "succeeded",
    QUEUED: "queued",
    CHECKING: "checking",
    FAILED: "failed",
    REUSED: "reused",
    SKIPPED: "skipped",
    LOCKED: "waiting for another process",
    DONE: "done",
}
STYLE = {
    DOWNLOADING: "cyan",
    SLOT: "yellow",
    RUNNING: "blue",
    QUEUED: "dim",
    CHECKING: "dim",
    SUCCEEDED: "green",
    FAILED: "red",
    REUSED: "green",
    SKIPPED: "yellow",
    LOCKED: "yellow",
    DONE: "green",
}


class LiveDisplay(Display):
    """A live board on a terminal: a header with the batch's totals, one row per id in
    words, and, with more ids than fit, rows for the busiest ones and a summary line for
    the others. Every line fits the terminal's width.

    The board is a rich renderable, redrawn a few times a second from the state and the
    clock (so a speed falls while no event comes); rendering to any Console shows it. With
    a console that is not a terminal (tests), nothing is drawn until asked.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        clock: Clock = time.monotonic,
        console: Console | None = None,
        max_rows: int = MAX_ROWS,
    ) -> None:
        super().__init__(stream, clock=clock)
        self.console = console if console is not None else Console(file=self.stream)
        self.max_rows = max_rows
        self.overall = Meter()
        self.started: float | None = None
        # The board is drawn on rich's refresh thread while events arrive on the loop's.
        self._lock = threading.RLock()
        self._live: Live | None = None

    def __enter__(self) -> LiveDisplay:
        return self

    def close(self) -> None:
        with self._lock:
            live, self._live = self._live, None
        if live is not None:
            live.stop()  # draws the last state once more, and leaves it on the screen

    def write_line(self, text: str) -> None:
        if not self.print_above(text):
            write_text(self.stream, text)

    def print_above(self, text: str) -> bool:
        with self._lock:
            if self._live is None:
                return False
            # Through rich's console, which clears the board, prints, and draws it again.
            self.console.print(Text(text), soft_wrap=True)
            return True

    # -- state, under the lock -----------------------------------------------------------

    def track(self, request_ids: Sequence[str], *, downloading: bool) -> None:
        with self._lock:
            super().track(request_ids, downloading=downloading)
            if self.started is None:
                self.started = self.clock()
            start = self._live is None and self.console.is_terminal
            if start:
                self._live = Live(
                    self,
                    console=self.console,
                    refresh_per_second=4,
                    # stdout holds the results: never let the live display capture it.
                    redirect_stdout=False,
                    redirect_stderr=False,
                    transient=False,
                )
        if start and self._live is not None:
            # A first frame now: a batch the journal settles at once may end before the
            # first refresh.
            self._live.start(refresh=True)

    def event(self, event: ProgressEvent) -> None:
        with self._lock:
            super().event(event)

    def _changed(self, request_id: str, job: _Job, status: Status) -> None:
        with self._lock:
            super()._changed(request_id, job, status)

    def finished(
        self,
        request_id: str,
        error: BaseException | None,
        files: Iterable[StoredFile] | None = None,
        *,
        skipped: Sequence[str] = (),
    ) -> None:
        with self._lock:
            super().finished(request_id, error, files, skipped=skipped)

    def waiting(self, request_id: str) -> bool:
        with self._lock:
            job = self.job(request_id)
            if not job.done and job.waiting_since is None:
                job.waiting_since = self.clock()
            return self._live is not None

    def _started(self, job: _Job) -> None:
        self.overall.mark(self.clock())

    def _moved(self, job: _Job, count: int) -> None:
        super()._moved(job, count)
        self.overall.add(self.clock(), count)

    # -- what a row says -----------------------------------------------------------------

    def state(self, job: _Job) -> str:
        """The id's state, one of the names above, from what the events said."""
        if job.done:
            if job.failed:
                return FAILED
            if job.skipped:
                return SKIPPED
            if job.files and all(f.reused for f in job.files):
                return REUSED
            return DONE
        if job.waiting_since is not None:
            return LOCKED
        if job.transferring:
            return DOWNLOADING
        status = job.last_status
        if status is Status.SUCCEED:
            # No event says "waiting for a slot": a job that succeeded and has no video
            # moving is waiting for one of the client's download slots (or, for a moment,
            # connecting to the video host; or between two of its videos).
            return SLOT if self.downloading else SUCCEEDED
        if status is Status.IN_PROGRESS:
            return RUNNING
        if status is Status.IN_QUEUE:
            return QUEUED
        if status is Status.FAILED:
            return FAILED
        return CHECKING  # no status read yet

    def words(self, request_id: str, job: _Job, now: float) -> str:
        """What the id's row says after its id."""
        state = self.state(job)
        if state == DOWNLOADING:
            text = f"downloading {_bytes_of(job.bytes_done, job.bytes_total)}"
            idle = job.meter.idle(now)
            if idle >= STALLED_AFTER:
                return f"{text} stalled {human_duration(idle)}"
            rate = job.meter.rate(now)
            return text if rate is None else f"{text} {human_speed(rate)}"
        if state == FAILED:
            if job.error is None:  # Failed read, the batch's last word not yet
                return "failed at SiliconFlow"
            return f"failed: {failure_words(job.error, request_id, self.explain)}"
        if state == REUSED:
            return f"{REUSED} {human_size(job.bytes_done)}"
        if state == SKIPPED:
            return f"skipped: {', '.join(job.skipped)} already exists (kept as it is)"
        if state == LOCKED and job.waiting_since is not None:
            return f"{LOCKED} ({human_duration(now - job.waiting_since)})"
        if state == DONE and job.videos:
            reused = f" ({job.reused} reused)" if job.reused else ""
            return f"done {human_size(job.bytes_done)}{reused}"
        if state == SLOT and job.videos:
            saved = sum(v.complete for v in job.videos.values())
            return f"{saved} saved, {SLOT}"
        return state

    # -- drawing ---------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        with self._lock:
            board = self.board(options.max_width, options.size.height)
        yield board

    def board(self, width: int, height: int) -> RenderableType:
        """The header, the rows and any summary lines, for a screen this size."""
        now = self.clock()
        states = {rid: self.state(job) for rid, job in self.jobs.items()}
        lines: list[RenderableType] = [_line(t) for t in self.header(now, states)]
        # Room for the header's two lines, two summary lines and the cursor's line: a board
        # taller than the terminal would be cut by rich, the summary first.
        budget = max(1, min(self.max_rows, height - 5))
        if len(self.jobs) <= budget:
            shown = list(self.jobs)
        else:
            rank = {state: i for i, state in enumerate(PRIORITY)}
            active = [rid for rid, s in states.items() if s not in FINISHED]
            active.sort(key=lambda rid: (rank[states[rid]], self.jobs[rid].order))
            shown = sorted(active[:budget], key=lambda rid: self.jobs[rid].order)
        if shown:
            lines.append(self.rows(shown, now, width))
        if len(shown) < len(self.jobs):
            lines += [_line(t) for t in self.summary(set(shown), states, width)]
        return Group(*lines)

    def header(self, now: float, states: dict[str, str]) -> list[str]:
        done, failed = self.done_count - self.failed_count, self.failed_count
        waiting = len(self.jobs) - self.done_count
        elapsed = now - self.started if self.started is not None else 0.0
        first = (
            f"all jobs: {done} done, {failed} failed, {waiting} still waiting · "
            f"{human_duration(elapsed)} elapsed"
        )
        if self.overall.started is None:
            return [first]
        moving = [j for j in self.jobs.values() if not j.done and j.transferring]
        known = [j.bytes_total for j in self.jobs.values() if j.videos]
        done_bytes = sum(j.bytes_done for j in self.jobs.values())
        total = sum(t for t in known if t is not None)
        # Sizes are known only once a video starts: until every id left is downloading
        # (none queued, running or waiting for a slot), the total is only a part of it.
        every_size_known = None not in known and all(
            states[rid] in (DOWNLOADING, *FINISHED) for rid in self.jobs
        )
        parts = [f"{human_size(done_bytes)} of {human_size(total)}"]
        if not every_size_known:
            parts[0] += " known so far"
        rate = self.overall.rate(now)
        if moving and all(j.meter.idle(now) >= STALLED_AFTER for j in moving):
            parts.append("stalled")
        elif moving and rate is not None:
            parts.append(human_speed(rate))
            measured = now - (self.overall.started or now)
            if every_size_known and rate > 0 and measured >= ETA_AFTER:
                parts.append(f"ETA {human_duration((total - done_bytes) / rate)}")
        return [first, "  " + " · ".join(parts)]

    def rows(self, shown: Sequence[str], now: float, width: int) -> Table:
        id_width = min(max(len(printable(rid)) for rid in shown), ID_WIDTH, max(8, width // 3))
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, width=id_width)
        table.add_column(no_wrap=True, width=BAR_WIDTH)
        table.add_column(no_wrap=True, overflow="ellipsis")
        for rid in shown:
            job = self.jobs[rid]
            state = self.state(job)
            bar: RenderableType = ""
            total = job.bytes_total
            if job.videos and total:
                bar = ProgressBar(total=total, completed=job.bytes_done, width=BAR_WIDTH)
            words = Text(self.words(rid, job, now), style=STYLE[state])
            if state == DOWNLOADING and job.meter.idle(now) >= STALLED_AFTER:
                words.stylize("yellow")
            table.add_row(shorten(printable(rid), id_width), bar, words)
        return table

    def summary(self, shown: set[str], states: dict[str, str], width: int) -> list[str]:
        """One line counting the ids without a row by state; one naming the failed ones."""
        counts = dict.fromkeys(PRIORITY, 0)
        for rid, state in states.items():
            if rid not in shown:
                counts[state] += 1
        parts = [f"{n} {SHORT[s]}" for s, n in counts.items() if n]
        others = len(states) - len(shown)
        lines = [(f"+ {others} more: " if shown else f"{others} ids: ") + ", ".join(parts)]
        failed = [rid for rid, s in states.items() if s == FAILED and rid not in shown]
        if failed:
            line = "failed:"
            for i, rid in enumerate(failed):
                more = f" (+{len(failed) - i} more)"
                name = " " + shorten(printable(rid), 16)
                if len(line) + len(name) + 1 + len(more) > width and i:
                    line += more
                    break
                line += name + ("," if i < len(failed) - 1 else "")
            lines.append(line)
        return lines


def _bytes_of(done: int, total: int | None) -> str:
    """``1.5/4.0 MiB`` when both are in one unit, ``900.0 KiB/4.0 MiB`` otherwise."""
    have, of = human_size(done), human_size(total)
    unit = have.rpartition(" ")[2]
    if total is not None and of.endswith(" " + unit) and unit != "B":
        return f"{have.rpartition(' ')[0]}/{of}"
    return f"{have}/{of}"


def _line(text: str) -> Text:
    """One line of the board: never wrapped, cut with an ellipsis at the screen's edge."""
    return Text(text, no_wrap=True, overflow="ellipsis")


class DisplayHandler(logging.Handler):
    """A logging handler that prints through a display (above live bars, if any)."""

    def __init__(self, display: Display) -> None:
        super().__init__()
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        try:
            request_id = getattr(record, WAITING_FOR, None)
            if isinstance(request_id, str) and self.display.waiting(request_id):
                return  # its row says it
            self.display.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)
