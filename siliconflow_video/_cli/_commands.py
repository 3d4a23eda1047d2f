"""The commands of ``siliconflow-video``: one :class:`Cli` per run, and :func:`run`, which
parses the arguments, sets up logging and the display, and runs the chosen command.

Results go to stdout: one line per id, human-readable or, with ``--json``, JSON Lines.
Progress, logs and errors go to stderr: live bars on a terminal, plain lines otherwise, and
one ``error: <what happened> — <what to do>`` line per problem, never a traceback (except
at ``-v`` for a bug). The API key is redacted from everything printed.

Exit codes: 0 everything succeeded; 1 a job, a request for one id or a download failed (after
all the others finished); 2 a usage or configuration error (no key, a rejected key, a wrong
base URL, bad options); 130 interrupted (Ctrl-C), with partial downloads kept for the next
run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._client import AsyncClient
from .._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DownloadPolicy,
    resolve_base_url,
)
from .._download import _disk_message  # the download branch makes this disk_message
from .._exceptions import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    DownloadError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    SiliconFlowError,
)
from .._logging import RedactingFilter
from .._models import WaitResult
from ._explain import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    exit_code,
    explain,
)
from ._parser import build_parser, collect_ids
from ._progress import Display, DisplayHandler, LiveDisplay, PlainDisplay
from ._rows import Row, printable, write_text

__all__ = ["INTERRUPTED", "Cli", "run"]

log = logging.getLogger("siliconflow_video.cli")

#: Per-id error lines on stderr beyond this many are summed up in one line.
MAX_ERROR_LINES = 10

#: The CLI flushes (and reports progress) every MiB instead of the library's 4 MiB.
CLI_DOWNLOAD = DownloadPolicy(write_buffer=1024 * 1024)

INTERRUPTED = "interrupted — partial downloads are kept and will resume on the next run"

# Errors that no id can escape: when the first status call meets one, nothing is waited for.
_GLOBAL_ERRORS = (
    APIConnectionError,
    AuthenticationError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
)


# --- running a command -----------------------------------------------------------------


class Cli:
    """One run of the command line: the parsed options, stdout, and the stderr display."""

    def __init__(
        self,
        args: argparse.Namespace,
        display: Display,
        redact: Callable[[str], str],
        api_key: str | None,
        stdout: TextIO,
    ) -> None:
        self.args = args
        self.display = display
        self.redact = redact
        self.api_key = api_key
        self.stdout = stdout
        self.submitted: str | None = None
        self.ids: list[str] = []
        try:
            self.base_url = resolve_base_url(args.base_url)
        except ConfigurationError:
            self.base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL

    # -- output

    def out(self, line: str) -> None:
        write_text(self.stdout, self.redact(line))

    def err(self, line: str) -> None:
        self.display.write_line(self.redact(line))

    def error(self, exc: BaseException, *, count: int = 1) -> None:
        what, todo = explain(exc, self.base_url)
        if count > 1:
            what = f"{what} ({count} ids)"
        self.err(f"error: {what} — {todo}")

    def report(self, rows: Sequence[Row]) -> int:
        """Print the rows on stdout and one line per problem on stderr; the exit code."""
        self.display.close()
        width = min(max((len(printable(r.request_id)) for r in rows), default=0), 40)
        for row in rows:
            if self.args.json:
                self.out(json.dumps(row.to_json(self.base_url)))
            else:
                self.out(row.to_text(width, self.base_url))
        self.stdout.flush()
        return self.problems(rows)

    def problems(self, rows: Sequence[Row]) -> int:
        """One stderr line per problem among the rows; the exit code."""
        # Setup errors (key, network) say the same for every id: one line for all of them.
        groups: dict[tuple[str, str], list[BaseException]] = {}
        for row in rows:
            if row.error is not None:
                groups.setdefault(explain(row.error, self.base_url), []).append(row.error)
        for shown, errors in enumerate(groups.values()):
            if shown == MAX_ERROR_LINES:
                rest = sum(len(e) for e in list(groups.values())[shown:])
                self.err(f"error: {rest} more ids did not succeed — see the output above")
                break
            self.error(errors[0], count=len(errors))
        return exit_code(row.error for row in rows)

    # -- the client

    def client(self, **options: Any) -> AsyncClient:
        key = (self.api_key or "").strip()
        if not key:
            raise UsageError(
                "no API key",
                f"set the {API_KEY_ENV} environment variable (or pass --api-key)",
            )
        options.setdefault("download", CLI_DOWNLOAD)
        client = AsyncClient(api_key=key, base_url=self.args.base_url, **options)
        self.base_url = client.base_url
        return client

    async def preflight(self, client: AsyncClient, request_ids: Sequence[str]) -> None:
        """Ask once for the first id, so a wrong key, a wrong base URL or no network end
        the command at once instead of being waited out (waits retry those forever)."""
        try:
            await client.get_status(request_ids[0])
        except _GLOBAL_ERRORS:
            raise
        except SiliconFlowError:
            pass  # about this id only: the command reports it in its row

    def failed_everywhere(self, request_ids: Sequence[str], exc: BaseException) -> int:
        """A failure that ends every id: in JSON each id still gets its line."""
        self.display.close()
        if self.args.json:
            return self.report([Row(rid, error=exc) for rid in request_ids])
        self.error(exc)
        return exit_code([exc])

    # -- commands

    async def download(self) -> int:
        args = self.args
        ids = self.ids
        dest = Path(args.output)
        try:
            async with self.client(
                max_concurrent_requests=args.max_requests,
                max_concurrent_downloads=args.concurrency,
                download=attrs.evolve(CLI_DOWNLOAD, sha256=args.sha256),
            ) as client:
                await check_destination(dest)
                await self.preflight(client, ids)
                self.display.track(ids, downloading=True)
                outcomes = await client.wait_and_download(
                    ids, dest, timeout=args.timeout, progress=self.display.event
                )
        except (*_GLOBAL_ERRORS, DownloadError) as exc:
            return self.failed_everywhere(ids, exc)
        return self.report([Row.from_outcome(o) for o in outcomes])

    async def status(self) -> int:
        args = self.args
        ids = self.ids

        async def one(client: AsyncClient, rid: str) -> Row:
            try:
                return Row.from_status(rid, await client.get_status(rid), None)
            except SiliconFlowError as exc:
                return Row.from_status(rid, None, exc)

        async with self.client(max_concurrent_requests=args.max_requests) as client:
            first = await one(client, ids[0])
            if isinstance(first.error, _GLOBAL_ERRORS):
                return self.failed_everywhere(ids, first.error)
            rest = await asyncio.gather(*(one(client, rid) for rid in ids[1:]))
        return self.report([first, *rest])

    async def wait(self) -> int:
        args = self.args
        ids = self.ids
        try:
            async with self.client(max_concurrent_requests=args.max_requests) as client:
                await self.preflight(client, ids)
                results = await self._wait_all(client, ids, args.timeout)
        except _GLOBAL_ERRORS as exc:
            return self.failed_everywhere(ids, exc)
        return self.report([Row.from_status(r.request_id, r.status, r.error) for r in results])

    async def _wait_all(
        self, client: AsyncClient, ids: list[str], timeout: float | None
    ) -> list[WaitResult]:
        self.display.track(ids, downloading=False)
        results: dict[str, WaitResult] = {}
        # The private iterator of as_completed, for its per-id status listener.
        completions = client.as_completed(ids, timeout=timeout, on_status=self.display.listener)
        async with contextlib.aclosing(completions):
            async for result in completions:
                results[result.request_id] = result
                self.display.finished(result.request_id, result.error)
        missing = SiliconFlowError("no result came back for this id")
        return [results.get(rid) or WaitResult(rid, None, missing) for rid in ids]

    async def submit(self) -> int:
        args = self.args
        dest = Path(args.download) if args.download else None
        try:
            async with self.client() as client:
                if dest is not None:
                    # Before paying for a video, make sure it can be saved.
                    await check_destination(dest)
                rid = await client.submit(
                    model=args.model,
                    prompt=args.prompt,
                    image_size=args.image_size,
                    negative_prompt=args.negative_prompt,
                    image=args.image,
                    seed=args.seed,
                )
                self.submitted = rid
                if dest is None and not args.wait:
                    self.out(json.dumps({"request_id": rid}) if args.json else rid)
                    return EXIT_OK
                log.info("submitted job %s", printable(rid))
                if dest is not None:
                    self.display.track([rid], downloading=True)
                    outcomes = await client.wait_and_download(
                        [rid], dest, timeout=args.timeout, progress=self.display.event
                    )
                    return self.report([Row.from_outcome(outcomes[0])])
                results = await self._wait_all(client, [rid], args.timeout)
                result = results[0]
                return self.report([Row.from_status(rid, result.status, result.error)])
        except SiliconFlowError as exc:
            self.display.close()
            self.error(exc)
            return exit_code([exc])

    async def demo(self) -> int:
        from ._demo import demo_report, run_demo

        dest = Path(self.args.output)
        await check_destination(dest)

        def on_submitted(ids: list[str]) -> None:
            log.info("demo: submitted %d jobs to the fake SiliconFlow", len(ids))
            self.display.track(ids, downloading=True)

        log.info("demo: starting a fake SiliconFlow on 127.0.0.1 (no key, no network)")
        run = await run_demo(dest, progress=self.display.event, on_submitted=on_submitted)
        rows = [Row.from_outcome(o) for o in run.outcomes]
        if self.args.json:
            return self.report(rows)
        self.display.close()
        for line in demo_report(run, dest):
            self.out(line)
        return self.problems(rows)

    async def run(self) -> int:
        """Run the chosen command; expected errors become one line and an exit code."""
        command: Callable[[], Any] = getattr(self, self.args.command)
        try:
            code: int = await command()
            return code
        except BrokenPipeError:
            raise  # stdout is gone: main() ends quietly
        except UsageError as exc:
            self.display.close()
            self.error(exc)
            return EXIT_USAGE
        except SiliconFlowError as exc:
            self.display.close()
            self.error(exc)
            return exit_code([exc])
        except Exception as exc:  # a bug still gets one line, not a traceback
            self.display.close()
            self.error(exc)
            log.debug("traceback of the unexpected error:", exc_info=True)
            return EXIT_FAILED
        finally:
            self.display.close()


# --- the destination -------------------------------------------------------------------


def _try_writing(dest: Path) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(_disk_message(exc, "create the folder", dest), path=str(dest)) from None
    try:
        fd, name = tempfile.mkstemp(prefix=".siliconflow-video-check-", dir=dest)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        probe = dest / ".siliconflow-video-check"
        raise DownloadError(_disk_message(exc, "write", probe), path=str(dest)) from None


async def check_destination(dest: Path) -> None:
    """Create ``dest`` and write in it once, so a bad folder fails the command before any
    waiting (or paying) rather than when the first video is ready. The messages are the
    downloader's own."""
    await asyncio.to_thread(_try_writing, dest)


# --- main ------------------------------------------------------------------------------


def _make_display(quiet: bool) -> Display:
    if quiet:
        return Display(sys.stderr)
    if sys.stderr.isatty():
        return LiveDisplay(sys.stderr)
    return PlainDisplay(sys.stderr)


@contextlib.contextmanager
def _logging_to(
    display: Display, redactor: RedactingFilter, *, verbose: bool, quiet: bool
) -> Iterator[None]:
    """Route every log record through the display, redacted; undo it afterwards."""
    handler = DisplayHandler(display)
    handler.addFilter(redactor)
    if verbose:
        fmt = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    package = logging.getLogger("siliconflow_video")
    # `backoff` logs every retry at INFO and every give-up at ERROR on its own logger; the
    # package logs its retries itself (at DEBUG), and the CLI reports the final error.
    backoff_log = logging.getLogger("backoff")
    old_levels = package.level, backoff_log.level
    package.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    backoff_log.setLevel(logging.DEBUG if verbose else logging.CRITICAL + 1)
    # On the root logger: asyncio's and aiohttp's warnings are redacted too.
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        package.setLevel(old_levels[0])
        backoff_log.setLevel(old_levels[1])


def run(argv: list[str] | None) -> int:
    """Parse the arguments, run the command, and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # The demo uses the fake's own key and never reads the environment's.
    api_key = None if args.command == "demo" else args.api_key or os.environ.get(API_KEY_ENV)
    redactor = RedactingFilter([api_key, api_key.strip()] if api_key else [])
    display = _make_display(args.quiet)
    cli = Cli(args, display, redactor.redact, api_key, sys.stdout)
    with _logging_to(display, redactor, verbose=args.verbose, quiet=args.quiet):
        if args.command in ("download", "status", "wait"):
            # Before the event loop: a Ctrl-C while reading stdin must stop the read.
            try:
                cli.ids = collect_ids(args)
            except UsageError as exc:
                cli.error(exc)
                return EXIT_USAGE
        try:
            return asyncio.run(cli.run())
        except KeyboardInterrupt:
            # asyncio.run cancelled the command first: downloads stopped cleanly and kept
            # their .part files.
            display.close()
            line = INTERRUPTED
            if cli.submitted:
                line = (
                    f"interrupted — job {cli.submitted} goes on at SiliconFlow; get its "
                    f"videos later with: siliconflow-video download {cli.submitted}"
                )
                if args.download:
                    line += f" -o {args.download} (partial downloads resume)"
            cli.err(line)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # stdout was closed early (| head): nothing more to say to anyone.
            # Point stdout at /dev/null so the interpreter's final flush fails no more.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
