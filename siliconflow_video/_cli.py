"""The ``siliconflow-video`` command line (also ``python -m siliconflow_video``).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from ._client import AsyncClient
from ._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DownloadPolicy,
    resolve_base_url,
)
from ._download import disk_message as _disk_message
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    JobFailedError,
    MalformedResponseError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SiliconFlowError,
    UnsafeFileNameError,
    VideoURLExpiredError,
    WaitTimeoutError,
)
from ._logging import RedactingFilter
from ._models import Outcome, Status, VideoStatus, WaitResult
from ._progress import Display, DisplayHandler, LiveDisplay, PlainDisplay, printable, write_text

__all__ = ["build_parser", "main"]

log = logging.getLogger("siliconflow_video.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Per-id error lines on stderr beyond this many are summed up in one line.
MAX_ERROR_LINES = 10

#: The CLI flushes (and reports progress) every MiB instead of the library's 4 MiB.
CLI_DOWNLOAD = DownloadPolicy(write_buffer=1024 * 1024)

INTERRUPTED = "interrupted — partial downloads are kept and will resume on the next run"

# Errors that say the setup is wrong rather than one id: they exit 2.
_CONFIG_ERRORS = (ConfigurationError, AuthenticationError, NotFoundError)
# Errors that no id can escape: when the first status call meets one, nothing is waited for.
_GLOBAL_ERRORS = (
    APIConnectionError,
    AuthenticationError,
    NotFoundError,
    PaymentRequiredError,
    PermissionDeniedError,
)


class UsageError(Exception):
    """A problem with the command line or the environment: exit 2 with one line."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo


# --- the command line ----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _add_globals(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The same options on the main parser and on each command, so they work before or
    # after the command name; on the commands they default to "not given" (SUPPRESS) so
    # they never overwrite a value given before the command.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=default(None),
        help=f"the API key; prefer the {API_KEY_ENV} environment variable, as a key on "
        "the command line shows in the process list and the shell history",
    )
    group.add_argument(
        "--base-url",
        metavar="URL",
        default=default(None),
        help=f"the API base URL (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}; "
        "accounts on siliconflow.com use https://api.siliconflow.com/v1)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="debug logs on stderr (the key is always redacted)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress on stderr, only errors",
    )


def _add_ids(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="request ids (requestId of /video/submit); '-' reads them from stdin",
    )
    parser.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read ids from FILE, one per line ('-': stdin; blank lines and # comments "
        "are skipped); may be repeated",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON Lines on stdout, one object per id in the order given",
    )


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop waiting after S seconds (jobs go on at SiliconFlow; default: no limit)",
    )


def _add_max_requests(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-requests",
        type=_positive_int,
        default=16,
        metavar="N",
        help="at most N API requests in flight (default: 16)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``siliconflow-video``."""
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog="siliconflow-video",
        description="Wait for SiliconFlow video jobs and download every video.",
        epilog="exit codes: 0 all succeeded, 1 a job or download failed, 2 usage or "
        f"configuration error, 130 interrupted. The key is read from {API_KEY_ENV}. "
        "Try 'siliconflow-video demo': it needs no key and no network.",
    )
    _add_globals(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    download = commands.add_parser(
        "download",
        parents=[common],
        help="wait for jobs and download all their videos",
        description="Wait for every id and download all its videos into DIR. Files appear "
        "under their final name only when complete; a rerun skips finished files and "
        "resumes partial ones.",
    )
    _add_ids(download)
    download.add_argument(
        "-o",
        "--output",
        default=".",
        metavar="DIR",
        help="folder for the videos, created if needed (default: the current folder)",
    )
    download.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="at most N videos downloading at once (default: 4)",
    )
    download.add_argument(
        "--sha256",
        action="store_true",
        help="compute each video's sha256 while it downloads (costs about as much CPU as "
        "the download; printed with --json)",
    )
    _add_timeout(download)
    _add_max_requests(download)
    _add_json(download)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="print the current status of jobs",
        description="Ask once for the status of each id.",
    )
    _add_ids(status)
    _add_max_requests(status)
    _add_json(status)

    wait = commands.add_parser(
        "wait",
        parents=[common],
        help="wait for jobs and print their video URLs",
        description="Wait for every id without downloading; print each job's video URLs "
        "(valid for one hour).",
    )
    _add_ids(wait)
    _add_timeout(wait)
    _add_max_requests(wait)
    _add_json(wait)

    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="submit a job and print its requestId",
        description="Submit one generation job and print its requestId; with --wait or "
        "--download, also wait for it.",
    )
    submit.add_argument("--model", required=True, help="e.g. Wan-AI/Wan2.2-T2V-A14B")
    submit.add_argument("--prompt", required=True, help="what the video shows")
    submit.add_argument(
        "--image-size",
        default="1280x720",
        metavar="WxH",
        help="1280x720 (default), 720x1280 or 960x960",
    )
    submit.add_argument("--negative-prompt", metavar="TEXT", help="what the video avoids")
    submit.add_argument(
        "--image",
        metavar="PATH|URL",
        help="the first frame, for image-to-video models: a file or an http(s) URL",
    )
    submit.add_argument("--seed", type=int, metavar="N", help="a fixed seed")
    submit.add_argument("--wait", action="store_true", help="wait for the job and print its URLs")
    submit.add_argument(
        "--download",
        metavar="DIR",
        help="wait for the job and download its videos into DIR (checked before submitting)",
    )
    _add_timeout(submit)
    _add_json(submit)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="try it all offline: no key, no network",
        description="Start the package's fake SiliconFlow on loopback, submit three jobs, "
        "wait for them and download the videos with progress. Needs no key and no "
        "network; the global --api-key and --base-url are not used.",
    )
    demo.add_argument(
        "-o",
        "--output",
        default="siliconflow-demo",
        metavar="DIR",
        help="folder for the demo videos (default: ./siliconflow-demo)",
    )
    _add_json(demo)
    return parser


def _read_lines(name: str) -> list[str]:
    """Ids from a file or stdin: one per line, blank lines and # comments skipped."""
    if name == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(name).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise UsageError(
                f"cannot read ids from {name}: {reason or exc}",
                "check the --from-file path",
            ) from None
    ids = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line)
    return ids


def _collect_ids(args: argparse.Namespace) -> list[str]:
    """Every id given, in order, each once."""
    ids: list[str] = []
    stdin_read = False
    for item in args.ids:
        if item == "-":
            if not stdin_read:
                ids += _read_lines("-")
                stdin_read = True
        elif not item.strip():
            raise UsageError("an empty request id was given", "check the command's arguments")
        else:
            ids.append(item.strip())
    for name in args.from_file:
        if name == "-" and stdin_read:
            continue
        stdin_read = stdin_read or name == "-"
        ids += _read_lines(name)
    if not ids:
        raise UsageError(
            "no request ids given",
            "pass ids as arguments, or --from-file FILE ('-' for stdin)",
        )
    return list(dict.fromkeys(ids))


# --- explaining errors ---------------------------------------------------------------------


def explain(exc: BaseException, base_url: str) -> tuple[str, str]:
    """(what happened, what to do) for an error, in words for a person at a shell.

    Errors about the whole setup (key, network, base URL) do not name an id, so that many
    ids failing the same way make one line.
    """
    if isinstance(exc, UsageError):
        return exc.what, exc.todo
    if isinstance(exc, AuthenticationError):
        return (
            "the API key was rejected (HTTP 401)",
            f"check {API_KEY_ENV}, and that it belongs to this base URL's region "
            f"(.cn vs .com; the base URL is {base_url})",
        )
    if isinstance(exc, PaymentRequiredError):
        return (
            f"the account has no balance left (HTTP 402): {exc.api_message}",
            "top up the account in the SiliconFlow console, then run again",
        )
    if isinstance(exc, PermissionDeniedError):
        return (
            f"the API refused access (HTTP 403): {exc.api_message}",
            "the account may need real-name verification, or no access to this model",
        )
    if isinstance(exc, NotFoundError):
        return (
            f"{base_url} has no video API (HTTP 404)",
            f"check --base-url or {BASE_URL_ENV}; it should look like {DEFAULT_BASE_URL}",
        )
    if isinstance(exc, BadRequestError):
        code = f", code {exc.code}" if exc.code is not None else ""
        if exc.request_id:
            return (
                f"the API rejected request id {exc.request_id!r}: {exc.api_message} "
                f"(HTTP 400{code})",
                "check the id, and that it was created with this key and base URL",
            )
        return (
            f"the API rejected the request: {exc.api_message} (HTTP 400{code})",
            "check --model, --prompt, --image-size and --image",
        )
    if isinstance(exc, RateLimitError):
        return (
            "the API kept answering 'too many requests' (HTTP 429)",
            "wait a minute and run again, or lower --max-requests",
        )
    if isinstance(exc, ServerError):
        return (
            f"SiliconFlow answered HTTP {exc.status_code} ({exc.api_message})",
            "SiliconFlow is having trouble; run again later",
        )
    if isinstance(exc, APIStatusError):
        return (f"the API answered: {exc}", "check the ids and options, then run again")
    if isinstance(exc, APITimeoutError):
        return (
            f"no answer from {base_url} in time",
            "check your network or --base-url, or run again later",
        )
    if isinstance(exc, APIConnectionError):
        return f"cannot reach {base_url}", "check your network or --base-url"
    if isinstance(exc, MalformedResponseError):
        return (
            f"the API sent an unexpected answer: {exc}",
            "run again later; if it persists, please report it",
        )
    if isinstance(exc, JobFailedError):
        return (
            f"job {exc.request_id!r} failed: {exc.reason or 'no reason given'}",
            "nothing to download; change the prompt or parameters and submit a new job",
        )
    if isinstance(exc, WaitTimeoutError):
        return (
            str(exc),
            "the job goes on at SiliconFlow; run the command again later, or raise --timeout",
        )
    if isinstance(exc, VideoURLExpiredError):
        return str(exc), "run the command again soon after the job succeeds"
    if isinstance(exc, DownloadError):
        if exc.request_id is None:  # the destination itself, before any download
            todo = "choose another -o folder, or fix its permissions or free some space"
        elif exc.status_code is None:
            todo = (
                "fix the destination (free space, write permission, or another -o folder), "
                "then run the same command again: finished files are kept, partial ones resume"
            )
        else:
            todo = "run the same command again: finished files are kept, partial ones resume"
        return str(exc), todo
    if isinstance(exc, UnsafeFileNameError):
        return str(exc), "this id cannot name a file; check the id"
    if isinstance(exc, ConfigurationError):
        return str(exc), "check the command's options (see --help)"
    if isinstance(exc, SiliconFlowError):
        return str(exc), "run again; add -v for details"
    return (
        f"unexpected {type(exc).__name__}: {exc}",
        "please report this (run with -v for details)",
    )


def exit_code(errors: Iterable[BaseException | None]) -> int:
    """2 if any error is about the setup, else 1 if any error at all, else 0."""
    found = [e for e in errors if e is not None]
    if any(isinstance(e, (*_CONFIG_ERRORS, UsageError)) for e in found):
        return EXIT_USAGE
    return EXIT_FAILED if found else EXIT_OK


# --- one line of output per id ---------------------------------------------------------


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

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> Row:
        status = outcome.status
        return cls(
            request_id=outcome.request_id,
            status=status.status.value if status else None,
            reason=(status.reason or None) if status else None,
            paths=tuple(str(f.path) for f in outcome.files),
            sha256=tuple(f.sha256 for f in outcome.files),
            error=outcome.error,
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
            "error": None,
        }
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
            if self.urls:
                parts += list(self.urls)
            if self.error is not None:
                parts.append(f"error: {explain(self.error, base_url)[0]}")
        return "  ".join(parts).rstrip()


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


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script exits with it)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before or after the event loop ran
        write_text(sys.stderr, INTERRUPTED)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
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
                cli.ids = _collect_ids(args)
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
