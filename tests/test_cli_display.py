"""The live display: rows and header rendered with a clock the test drives."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from siliconflow_video import (
    APIConnectionError,
    DownloadError,
    EventKind,
    JobFailedError,
    ProgressEvent,
    Status,
    VideoFile,
)
from siliconflow_video._cli._progress import (
    ETA_AFTER,
    MIN_SPAN,
    SPEED_WINDOW,
    STALLED_AFTER,
    LiveDisplay,
    Meter,
    PlainDisplay,
)
from siliconflow_video._cli._rows import failure_words, human_duration, shorten

MiB = 1024 * 1024


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_display(clock: Clock, **options: int) -> LiveDisplay:
    # A console that is not a terminal: nothing is drawn until the test renders the board.
    console = Console(width=80, height=options.pop("height", 30), file=io.StringIO())
    return LiveDisplay(io.StringIO(), clock=clock, console=console, **options)


def screen(display: LiveDisplay, width: int = 80, height: int = 30) -> list[str]:
    """The board as text, the way a terminal of this size would show it."""
    console = Console(width=width, height=height, record=True, file=io.StringIO())
    console.print(display)
    return console.export_text(styles=False).splitlines()


def send(display: LiveDisplay, rid: str, kind: EventKind, **fields: object) -> None:
    display.event(ProgressEvent(rid, kind, **fields))  # type: ignore[arg-type]


def row(lines: Sequence[str], rid: str) -> str:
    (found,) = [line for line in lines if line.startswith(rid)]
    return found


def assert_fits(lines: Sequence[str], width: int = 80) -> None:
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, too_long


# --- rows and header -------------------------------------------------------------------------


def test_each_row_says_its_state_in_words() -> None:
    """Checking, queued, running, waiting for a slot, downloading, reused, done and failed
    are each said in words, failures with their reason and no class name."""
    clock = Clock()
    display = make_display(clock)
    ids = ["new", "queued", "running", "slot", "moving", "reused", "fresh", "refused", "offline"]
    display.track(ids, downloading=True)
    send(display, "queued", EventKind.STATUS, status=Status.IN_QUEUE)
    send(display, "running", EventKind.STATUS, status=Status.IN_PROGRESS)
    send(display, "slot", EventKind.STATUS, status=Status.SUCCEED)
    send(display, "moving", EventKind.STATUS, status=Status.SUCCEED)
    send(display, "moving", EventKind.BYTES, index=0, bytes_done=0, bytes_total=4 * MiB)
    clock.advance(1)
    send(display, "moving", EventKind.BYTES, index=0, bytes_done=MiB, bytes_total=4 * MiB)
    reused = VideoFile(path=Path("r.mp4"), size=2 * MiB, sha256=None, reused=True, index=0)
    send(display, "reused", EventKind.BYTES, index=0, bytes_done=2 * MiB, bytes_total=2 * MiB)
    send(display, "reused", EventKind.FILE, index=0, bytes_done=2 * MiB, bytes_total=2 * MiB)
    display.finished("reused", None, [reused])
    send(display, "fresh", EventKind.BYTES, index=0, bytes_done=3 * MiB, bytes_total=3 * MiB)
    send(display, "fresh", EventKind.FILE, index=0, bytes_done=3 * MiB, bytes_total=3 * MiB)
    display.finished("fresh", None, [attrs_evolve(reused, reused=False, size=3 * MiB)])
    display.finished("refused", JobFailedError("refused", "content policy violation"))
    display.finished("offline", APIConnectionError("connection refused"))

    lines = screen(display)
    assert_fits(lines)
    assert "checking status" in row(lines, "new")
    assert "queued at SiliconFlow" in row(lines, "queued")
    assert "running at SiliconFlow" in row(lines, "running")
    assert "waiting for a download slot" in row(lines, "slot")
    assert "downloading 1.0/4.0 MiB 1.0 MiB/s" in row(lines, "moving")
    assert "reused (already complete) 2.0 MiB" in row(lines, "reused")
    assert "done 3.0 MiB" in row(lines, "fresh")
    assert "failed: job failed: content policy violation" in row(lines, "refused")
    assert "failed: cannot reach https://" in row(lines, "offline")
    text = "\n".join(lines)
    assert "Error" not in text  # words, not class names


def attrs_evolve(file: VideoFile, **changes: object) -> VideoFile:
    import attrs

    return attrs.evolve(file, **changes)


def test_failure_words_are_one_line_without_the_id() -> None:
    """A failure reads "job failed: <reason>" or the one-line explanation, id left out."""

    def explain(exc: BaseException) -> tuple[str, str]:
        return (f"video of 'abc' broke\n  at {exc}", "try again")

    assert failure_words(JobFailedError("abc", None), "abc", explain) == (
        "job failed: no reason given"
    )
    assert failure_words(DownloadError("x"), "abc", explain) == "video of broke at x"


def test_header_sums_up_the_batch_and_gives_an_eta_once_meaningful() -> None:
    """Done, failed and still waiting; bytes of the known total; speed; elapsed time; an
    ETA only once every id left is downloading and the speed has been measured."""
    clock = Clock()
    display = make_display(clock)
    display.track(["a", "b", "c", "d"], downloading=True)
    display.finished("d", JobFailedError("d", "nsfw"))
    total = 20 * MiB
    send(display, "a", EventKind.BYTES, index=0, bytes_done=0, bytes_total=total)
    send(display, "c", EventKind.STATUS, status=Status.IN_PROGRESS)
    clock.advance(2)
    send(display, "a", EventKind.BYTES, index=0, bytes_done=MiB, bytes_total=total)
    header = screen(display)[:2]
    assert header[0] == "all jobs: 0 done, 1 failed, 3 still waiting · 0:02 elapsed"
    assert header[1] == "  1.0 MiB of 20.0 MiB known so far · 512.0 KiB/s"  # no ETA yet

    for rid in ("b", "c"):
        send(display, rid, EventKind.STATUS, status=Status.SUCCEED)
        send(display, rid, EventKind.BYTES, index=0, bytes_done=0, bytes_total=MiB)
        send(display, rid, EventKind.FILE, index=0, bytes_done=MiB, bytes_total=MiB)
        display.finished(rid, None)
    clock.advance(ETA_AFTER)
    send(display, "a", EventKind.BYTES, index=0, bytes_done=MiB + MiB // 2, bytes_total=total)
    header = screen(display)[:2]
    assert header[0] == "all jobs: 2 done, 1 failed, 1 still waiting · 0:04 elapsed"
    # 3.5 MiB moved in 4 s; 18.5 MiB left at that rate: 21 s.
    assert header[1] == "  3.5 MiB of 22.0 MiB · 896.0 KiB/s · ETA 0:21"


def test_a_stalled_transfer_shows_its_speed_falling_then_stalled() -> None:
    """When bytes stop, the row's speed falls (never frozen), then reads "stalled"; the
    header says so too."""
    clock = Clock()
    display = make_display(clock)
    display.track(["slowpoke"], downloading=True)
    send(display, "slowpoke", EventKind.STATUS, status=Status.SUCCEED)
    done = 0
    send(display, "slowpoke", EventKind.BYTES, index=0, bytes_done=done, bytes_total=100 * MiB)
    for _ in range(20):
        clock.advance(0.25)
        done += MiB // 4
        send(display, "slowpoke", EventKind.BYTES, index=0, bytes_done=done, bytes_total=100 * MiB)
    speeds = []
    for _ in range(3):
        line = row(screen(display), "slowpoke")
        found = re.search(r"([\d.]+) (KiB|MiB)/s", line)
        assert found is not None, line
        speeds.append(float(found.group(1)) * (1024 if found.group(2) == "MiB" else 1))
        clock.advance(STALLED_AFTER / 3 - 0.01)
    assert speeds[0] == pytest.approx(1024)  # 1 MiB/s, in KiB
    assert speeds[0] > speeds[1] > speeds[2]
    clock.advance(0.05)
    lines = screen(display)
    assert "stalled 0:03" in row(lines, "slowpoke")
    assert "/s" not in row(lines, "slowpoke")
    assert "stalled" in lines[1]

    clock.advance(SPEED_WINDOW)  # bytes again, after a long silence: a fresh speed
    send(display, "slowpoke", EventKind.BYTES, index=0, bytes_done=done + 1, bytes_total=100 * MiB)
    assert "stalled" not in row(screen(display), "slowpoke")


def test_reused_bytes_count_as_done_but_not_as_speed() -> None:
    """A file found complete adds its bytes to the header, not to the speed."""
    clock = Clock()
    display = make_display(clock)
    display.track(["old", "new"], downloading=True)
    send(display, "new", EventKind.BYTES, index=0, bytes_done=0, bytes_total=10 * MiB)
    clock.advance(1)
    send(display, "old", EventKind.BYTES, index=0, bytes_done=500 * MiB, bytes_total=500 * MiB)
    send(display, "new", EventKind.BYTES, index=0, bytes_done=MiB, bytes_total=10 * MiB)
    header = screen(display)[1]
    assert header.startswith("  501.0 MiB of 510.0 MiB")
    assert "1.0 MiB/s" in header


def test_more_ids_than_fit_give_summary_lines() -> None:
    """With more ids than rows, the busiest get rows and one line counts the rest by state;
    another names the failed ones; nothing wraps."""
    clock = Clock()
    display = make_display(clock, height=14)
    ids = [f"{i:04d}-8f3a1c77e2d94b0bb1a6d0c4e5f6a7b8c9d0" for i in range(60)]
    display.track(ids, downloading=True)
    for rid in ids[:30]:
        send(display, rid, EventKind.STATUS, status=Status.IN_QUEUE)
    for rid in ids[30:40]:
        send(display, rid, EventKind.STATUS, status=Status.IN_PROGRESS)
    for rid in ids[40:45]:
        display.finished(rid, JobFailedError(rid, "policy"))
    for rid in ids[45:58]:
        display.finished(rid, None)
    for rid in ids[58:]:
        send(display, rid, EventKind.BYTES, index=0, bytes_done=10, bytes_total=MiB)
    lines = screen(display, height=14)
    assert_fits(lines)
    assert len(lines) <= 14
    rows = [line for line in lines if re.match(r"\d{4}-", line)]
    assert rows
    assert all("…" in line.split()[0] for line in rows)  # ids cut in the middle
    # The busiest have rows (in the ids' order, so rows do not jump about).
    assert [line.split()[0][:4] for line in rows if "downloading" in line] == ["0058", "0059"]
    (summary,) = [line for line in lines if line.startswith("+ ")]
    shown = len(rows)
    assert summary.startswith(f"+ {60 - shown} more: ")
    for state in ("queued", "running", "failed", "done"):
        assert f" {state}" in summary
    (failed,) = [line for line in lines if line.startswith("failed:")]
    assert shorten(ids[40], 16) in failed
    assert "more)" in failed or failed.count(",") == 4

    for rid in ids:
        display.finished(rid, None)
    lines = screen(display, height=14)
    assert lines[0] == "all jobs: 55 done, 5 failed, 0 still waiting · 0:00 elapsed"
    assert "60 ids: 5 failed, 55 done" in lines


def test_long_ids_and_reasons_fit_80_columns_without_wrapping() -> None:
    """Ids are shortened in the middle and long reasons cut at the edge: one line each."""
    clock = Clock()
    display = make_display(clock)
    ids = ["x" * 50 + str(i) for i in range(5)]
    display.track(ids, downloading=True)
    display.finished(ids[0], JobFailedError(ids[0], "the reason is " + "very " * 30 + "long"))
    send(display, ids[1], EventKind.BYTES, index=0, bytes_done=0, bytes_total=900 * 1024**3)
    clock.advance(2)
    send(display, ids[1], EventKind.BYTES, index=0, bytes_done=123 * MiB, bytes_total=900 * 1024**3)
    for width in (80, 60):
        lines = screen(display, width=width)
        assert_fits(lines, width)
        assert len(lines) == 2 + len(ids)  # header, then one line per id
        assert sum("…" in line for line in lines) >= len(ids)


def test_shorten_and_durations() -> None:
    """Ids are cut in the middle to exactly the width; durations read like a clock."""
    assert shorten("abcdefghij", 10) == "abcdefghij"
    assert shorten("abcdefghijk", 7) == "abc…ijk"
    assert len(shorten("a" * 100, 24)) == 24
    assert [human_duration(s) for s in (0, 59.9, 61, 3725)] == ["0:00", "0:59", "1:01", "1:02:05"]


def test_meter_measures_a_recent_window() -> None:
    """No rate from one piece; the rate of the last window; zero once bytes stop; a fresh
    start after a long pause."""
    meter = Meter(window=5)
    meter.mark(0)
    assert meter.rate(MIN_SPAN / 2) is None
    for t in range(1, 11):
        meter.add(t, 100)
    assert meter.rate(10) == pytest.approx(100)
    assert meter.rate(12.5) == pytest.approx(300 / 5)  # 3 pieces in (7.5, 12.5]
    assert meter.rate(16) == 0
    meter.mark(30)
    meter.add(31, 500)
    assert meter.rate(31) == pytest.approx(500)


def test_plain_display_says_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    """Off a terminal: one line per status change, byte lines spaced by the clock."""
    clock = Clock()
    display = PlainDisplay(io.StringIO(), clock=clock)
    display.track(["r"], downloading=True)
    with caplog.at_level(logging.INFO, logger="siliconflow_video.cli"):
        for _ in range(3):
            send(display, "r", EventKind.STATUS, status=Status.SUCCEED)
        for done in (1, 2, 3):
            send(display, "r", EventKind.BYTES, index=0, bytes_done=done, bytes_total=10)
        clock.advance(5)
        send(display, "r", EventKind.BYTES, index=0, bytes_done=4, bytes_total=10)
        display.finished("r", JobFailedError("r", "x"))
        display.finished("r", JobFailedError("r", "x"))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "r: Succeed, downloading",
        "r: video 0: 1 B of 10 B (10%)",
        "r: video 0: 4 B of 10 B (40%)",
        "r: failed",
    ]
