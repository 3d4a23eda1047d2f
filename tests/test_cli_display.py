"""The live display: rows and header rendered with a clock the test drives, and the
command line run on a real pseudo-terminal, read back as a person would see it."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
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
from siliconflow_video.testing import FakeSiliconFlow, SlowBody, StallMidBody

MiB = 1024 * 1024
KEY = "sk-display-test-5b0c9e1f"


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
    display.finished("fresh", None, [attrs.evolve(reused, reused=False, size=3 * MiB)])
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


# --- on a real pseudo-terminal -----------------------------------------------------------------

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def terminal_lines(raw: bytes) -> list[str]:
    """Every stretch of text the program wrote from a line's start to the next line break or
    cursor move: on an 80-column terminal, a stretch longer than 80 would wrap."""
    text = raw.decode("utf-8", "replace")
    text = re.sub(r"\x1b\][^\x07]*\x07", "", text)  # window titles
    text = CSI.sub(lambda m: "" if m.group(2) == "m" or m.group(1).startswith("?") else "\n", text)
    return [piece for piece in re.split(r"[\r\n]", text) if piece.strip()]


def run_on_terminal(
    args: Sequence[str], env: dict[str, str], *, lines: int = 24, stdout_too: bool = True
) -> tuple[int, bytes, str]:
    """Run the command with stdin and stderr (and stdout) on a pseudo-terminal of 80 columns;
    what the terminal got, and what stdout got when it is a pipe."""
    leader, follower = pty.openpty()
    env = {**env, "COLUMNS": "80", "LINES": str(lines), "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "siliconflow_video", *args],
        env=env,
        stdin=follower,
        stdout=follower if stdout_too else subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    got = bytearray()
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    out = proc.stdout.read().decode() if proc.stdout is not None else ""
    return proc.wait(timeout=30), bytes(got), out


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILICONFLOW_")}
    env.pop("COLUMNS", None)
    return env


def test_demo_on_a_terminal_shows_header_and_rows_in_words(tmp_path: Path) -> None:
    """The demo on an 80-column terminal: a header with totals, rows going from queued
    through running and downloading to done, and no display line over 80 columns."""
    code, raw, _ = run_on_terminal(["demo", "-o", str(tmp_path)], clean_env())
    assert code == 0, raw.decode(errors="replace")
    lines = terminal_lines(raw)
    cut = next(i for i, line in enumerate(lines) if line.startswith("Downloaded 3 videos"))
    board = lines[:cut]  # below it, stdout's results: long paths with their sha256
    assert_fits(board)
    text = "\n".join(board)
    assert "all jobs: 3 done, 0 failed, 0 still waiting" in text
    for words in ("queued at SiliconFlow", "running at SiliconFlow", "downloading ", "done "):
        assert words in text, words
    assert re.search(r"downloading [\d.]+/[\d.]+ MiB [\d.]+ (KiB|MiB)/s", text)
    assert re.search(r"\d+\.\d MiB of 9\.0 MiB · [\d.]+ (KiB|MiB)/s", text)
    assert "Traceback" not in text


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSiliconFlow]:
    fake = FakeSiliconFlow(api_key=KEY, seed=11)
    with fake.run_in_thread():
        yield fake


def test_download_on_a_small_terminal(server: FakeSiliconFlow, tmp_path: Path) -> None:
    """Many ids on a short 80-column terminal: the busiest in rows (stalled, waiting for a
    slot), a summary line for the rest; a rerun says reused, and failed with the reason."""
    env = {
        **clean_env(),
        "SILICONFLOW_API_KEY": KEY,
        "SILICONFLOW_BASE_URL": server.base_url,
    }
    stalled = server.add_job(videos=[64 * 1024])
    server.add_fault("video", StallMidBody(after_bytes=8192, seconds=STALLED_AFTER + 3),
                     request_id=stalled)  # fmt: skip
    failed = [server.add_job(outcome="Failed", reason="content policy") for _ in range(2)]
    slow = [server.add_job(videos=[96 * 1024]) for _ in range(3)]
    for rid in slow:
        server.add_fault("video", SlowBody(bytes_per_second=64 * 1024), request_id=rid)
    queued = [server.add_job(queue_seconds=4, videos=[1000]) for _ in range(6)]
    ids = [stalled, *failed, *slow, *queued]
    args = ["download", *ids, "-o", str(tmp_path), "--concurrency", "2"]
    code, raw, out = run_on_terminal(args, env, lines=12, stdout_too=False)
    assert code == 1, raw.decode(errors="replace")
    lines = terminal_lines(raw)
    # After the board, the closing error and summary lines, which wrap like any message.
    end = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert_fits(lines[:end])
    assert all(
        line.strip() != "..." for line in lines[:end]
    )  # rich's mark of a board taller than the terminal
    text = "\n".join(lines)
    assert re.search(r"downloading [\d.]+/64\.0 KiB stalled 0:0\d", text)
    assert "waiting for a download slot" in text
    summaries = [line for line in lines if re.match(r"\+ \d+ more: ", line)]
    assert any("queued" in line and "failed" in line for line in summaries), summaries
    assert any(line.startswith("failed: ") and shorten(failed[0], 16) in line for line in lines)
    assert "all jobs: 10 done, 2 failed, 0 still waiting" in text
    assert "JobFailedError" not in text
    assert "Traceback" not in text
    assert len(out.splitlines()) == len(ids)

    again = [stalled, *failed, *slow]
    # Without the journal the rerun asks for each status and finds the files complete
    # (with it, the journal answers at once and the run is over before a frame is drawn).
    code, raw, _ = run_on_terminal(["download", *again, "-o", str(tmp_path), "--no-journal"], env)
    assert code == 1, raw.decode(errors="replace")
    text = "\n".join(terminal_lines(raw))
    assert "reused (already complete) 64.0 KiB" in text
    assert "failed: job failed: content policy" in text


class Screen:
    """Just enough of a terminal to read what rich's live display leaves on the screen:
    text, carriage return, line feed, cursor up/down, column moves and line erases."""

    def __init__(self, width: int = 80) -> None:
        self.width = width
        self.lines: list[list[str]] = [[]]
        self.row = 0
        self.col = 0

    def feed(self, raw: bytes) -> list[str]:
        text = re.sub(r"\x1b\][^\x07]*\x07", "", raw.decode("utf-8", "replace"))
        for piece in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|[\r\n])", text):
            if not piece:
                continue
            if piece == "\r":
                self.col = 0
            elif piece == "\n":
                self.down(1)
            elif piece.startswith("\x1b["):
                self.control(piece[2:-1], piece[-1])
            else:
                for char in piece:
                    self.put(char)
        return ["".join(line).rstrip() for line in self.lines]

    def down(self, count: int) -> None:
        self.row += count
        while len(self.lines) <= self.row:
            self.lines.append([])

    def control(self, args: str, kind: str) -> None:
        count = int(args) if args.isdigit() else 1
        if kind == "A":
            self.row = max(0, self.row - count)
        elif kind == "B":
            self.down(count)
        elif kind == "G":
            self.col = count - 1
        elif kind == "K":
            line = self.lines[self.row]
            if args == "2":
                line.clear()
            else:
                del line[self.col :]

    def put(self, char: str) -> None:
        if self.col >= self.width:
            self.col = 0
            self.down(1)
        line = self.lines[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        self.col += 1


def test_rows_on_the_same_terminal_print_above_the_board(
    server: FakeSiliconFlow, tmp_path: Path
) -> None:
    """stdout and stderr on one terminal: each id's result row is printed above the live
    board as the id finishes, whole, and the board is drawn once below them, not torn."""
    env = {**clean_env(), "SILICONFLOW_API_KEY": KEY, "SILICONFLOW_BASE_URL": server.base_url}
    ids = [server.add_job(videos=[24 * 1024 * (n + 1)]) for n in range(3)]
    for rid in ids:
        server.add_fault("video", SlowBody(bytes_per_second=48 * 1024), request_id=rid)
    args = ["download", *ids, "-o", str(tmp_path), "--concurrency", "1"]
    code, raw, _ = run_on_terminal(args, env)
    assert code == 0, raw.decode(errors="replace")
    # A wide screen: a long result row stays one line (a real terminal wraps it; rich's
    # board, cut to 80 columns, never wraps).
    final = [line for line in Screen(width=10_000).feed(raw) if line.strip()]
    rows = [line for line in final if line.split()[:1] and line.split()[0] in ids]
    assert [line.split()[:2] for line in rows] == [[rid, "Succeed"] for rid in ids]
    for rid, line in zip(ids, rows, strict=True):
        assert line.endswith(str(tmp_path / f"{rid}_0.mp4"))
    assert sum(line.startswith("all jobs:") for line in final) == 1, final
    header = final.index(next(line for line in final if line.startswith("all jobs:")))
    assert header > final.index(rows[-1])  # the board stays below the results
    assert final[header].startswith("all jobs: 3 done, 0 failed, 0 still waiting")
