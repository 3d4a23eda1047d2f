"""The commands of ``siliconflow-video``: one :class:`Cli` per run, and :func:`run`, which
parses the arguments, sets up logging and the display, and runs the chosen command.

Results go to stdout: one line per id, human-readable or, with ``--json``, JSON Lines.
Progress, logs and errors go to stderr: live bars on a terminal, plain lines otherwise, and
one ``error: <what happened> — <what to do>`` line per problem, never a traceback (except
at ``-v`` for a bug). The API key is redacted from everything printed.

Exit codes: 0 everything succeeded; 1 a job, a request for one id or a download failed (after
all the others finished); 2 a usage or configuration error (no key, a rejected key, a wrong
base URL, bad options); 3 only --timeout ran out (the jobs go on; run again later); 130
interrupted (Ctrl-C) and 143 terminated (SIGTERM), with the rows of the finished ids printed
and partial downloads kept for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._client import AsyncClient, destination, journal_vouches, resume_plan
from .._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_RETRY,
    DownloadPolicy,
    resolve_base_url,
)
from .._download import disk_message
from .._exceptions import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    JournalError,
    JournalReadOnlyError,
    MalformedResponseError,
    NotFoundError,
    NotSiliconFlowError,
    PaymentRequiredError,
    PermissionDeniedError,
    SiliconFlowError,
    SubmitUnknownError,
    UnsafeFileNameError,
    WaitTimeoutError,
)
from .._journal import JobRecord, JobState, Journal, journal_name, open_journal, read_jobs
from .._logging import RedactingFilter
from .._models import Naming, check_request_id
from .._naming import default_name
from ._explain import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    DestinationError,
    OutputError,
    UsageError,
    exit_code,
    explain,
)
from ._parser import DEFAULT_JOURNAL, collect_ids, journal_path, name_from_template, parse
from ._progress import Display, DisplayHandler, LiveDisplay, PlainDisplay
from ._rows import Row, human_size, printable, write_text
from ._submits import SubmitLine, read_submit_file
from ._worker import defer_for_workers, run_worker_command

__all__ = ["INTERRUPTED", "Cli", "check_destination", "run"]

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
    NotSiliconFlowError,
    PaymentRequiredError,
    PermissionDeniedError,
)


# --- running a command -----------------------------------------------------------------


class _Client(AsyncClient):
    """The CLI's client: a journal that cannot take its last notes at close (a full disk)
    is a warning, since every row is printed by then; the next run finds the journal as
    it was at its last commit, and nothing in it is lost."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        except JournalError as exc:
            log.warning("warning: %s", exc)


class Cli:
    """One run of the command line: the parsed options, stdout, and the stderr display.

    Each id's row goes to stdout the moment the id is finished (:meth:`emit`), so a pipeline
    sees it at once and an interrupted run has printed every finished id.
    """

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
        self.key_from = "--api-key" if getattr(args, "api_key", None) else API_KEY_ENV
        self.stdout = stdout
        self.same_terminal = _same_terminal(stdout, display.stream)
        self.submitted: str | None = None
        self.terminated = False
        self.output_failed = False
        self.ids: list[str] = []
        self.rows: dict[str, Row] = {}
        self.started = time.monotonic()
        # Names given by --name, across the per-id downloads: two ids must not share one.
        self.claimed: dict[str, tuple[str, int]] = {}
        try:
            self.base_url = resolve_base_url(args.base_url)
        except ConfigurationError:
            self.base_url = args.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL

    # -- output

    def out(self, line: str) -> None:
        line = self.redact(line)
        if self.same_terminal and self.display.print_above(line):
            return  # drawn above the live board, which would otherwise draw over it
        try:
            write_text(self.stdout, line)
        except BrokenPipeError:
            raise  # | head has read enough: run() ends quietly
        except OSError as exc:
            raise OutputError(exc.strerror or str(exc)) from None

    def err(self, line: str) -> None:
        self.display.write_line(self.redact(line))

    def explain(self, exc: BaseException) -> tuple[str, str]:
        return explain(exc, self.base_url, key_from=self.key_from)

    def error(self, exc: BaseException, *, count: int = 1) -> None:
        what, todo = self.explain(exc)
        if count > 1:
            what = f"{what} ({count} ids)"
        self.err(f"error: {what} — {todo}")

    @property
    def width(self) -> int:
        return min(max((len(printable(rid)) for rid in self.ids), default=0), 40)

    def emit(self, row: Row) -> None:
        """Print one id's row on stdout now (flushed), once."""
        if row.request_id in self.rows:
            return
        self.rows[row.request_id] = row
        if self.args.json:
            self.out(json.dumps(row.to_json(self.base_url)))
        else:
            self.out(row.to_text(self.width, self.base_url))

    def report(self, rows: Sequence[Row] = ()) -> int:
        """Print the rows not printed yet, then one line per problem on stderr; the exit
        code."""
        for row in rows:
            self.emit(row)
        self.display.close()
        return self.problems(list(self.rows.values()))

    def problems(self, rows: Sequence[Row]) -> int:
        """One stderr line per problem among the rows; the exit code."""
        # Setup errors (key, network) say the same for every id: one line for all of them.
        groups: dict[tuple[str, str], list[BaseException]] = {}
        for row in rows:
            if row.error is not None:
                groups.setdefault(self.explain(row.error), []).append(row.error)
        for shown, errors in enumerate(groups.values()):
            if shown == MAX_ERROR_LINES:
                rest = sum(len(e) for e in list(groups.values())[shown:])
                self.err(f"error: {rest} more ids did not succeed — see the output above")
                break
            self.error(errors[0], count=len(errors))
        return exit_code(row.error for row in rows)

    def summary(self) -> None:
        """One closing line on stderr for a download: how the ids ended, bytes, time."""
        if self.args.quiet:
            return
        rows = list(self.rows.values())
        skipped = [r for r in rows if r.error is None and r.skipped]
        ok = [r for r in rows if r.error is None and not r.skipped]
        reused = [r for r in ok if r.files and all(f.reused for f in r.files)]
        timed_out = sum(isinstance(r.error, WaitTimeoutError) for r in rows)
        failed = len(rows) - len(ok) - len(skipped) - timed_out
        fetched = sum(f.size for r in rows for f in r.files if not f.reused)
        seconds = time.monotonic() - self.started
        # A kept file is not the video: the journal keeps such an id failed (resume tries
        # it again, and downloads it once the file is moved away). Say so, not "done".
        kept = (
            f"{len(skipped)} skipped (file already there; left unfinished for resume), "
            if skipped
            else ""
        )
        late = f"{timed_out} timed out, " if timed_out else ""
        self.err(
            f"summary: {len(ok)} succeeded ({len(reused)} already complete), {kept}"
            f"{late}{failed} failed, {len(self.ids) - len(rows)} unfinished; "
            f"{human_size(fetched)} downloaded in {seconds:.1f} s"
        )

    # -- the client

    def client(self, **options: Any) -> AsyncClient:
        key = (self.api_key or "").strip()
        if not key:
            raise UsageError(
                "no API key",
                f"set the {API_KEY_ENV} environment variable (or pass --api-key)",
            )
        options.setdefault("download", CLI_DOWNLOAD)
        client = _Client(api_key=key, base_url=self.args.base_url, **options)
        self.base_url = client.base_url
        return client

    async def preflight(self, client: AsyncClient, request_ids: Sequence[str]) -> None:
        """Ask once for the first id, so a wrong key, a wrong base URL or no network end
        the command at once instead of being waited out (waits retry those forever)."""
        try:
            await client.get_status(request_ids[0])
        except APIConnectionError as exc:
            if exc.maybe_processed or not await self.journal_vouches(client):
                raise
            # Not a wrong base URL: this journal's jobs were polled through it. An outage
            # (a service restarted during one): the waits ride it out, as after an answer.
            log.warning(
                "warning: cannot reach %s now, though it answered before (the journal says "
                "so): waiting for it to come back",
                client.base_url,
            )
        except _GLOBAL_ERRORS:
            raise
        except MalformedResponseError as exc:
            if exc.not_json_at_all:  # an HTML page: no id will fare better
                raise NotSiliconFlowError.from_answer(exc, client.base_url) from None
        except SiliconFlowError:
            pass  # about this id only: the command reports it in its row

    @staticmethod
    async def journal_vouches(client: AsyncClient) -> bool:
        """The client's journal says a status was read through its base URL before."""
        journal = await client.journal()
        return journal is not None and await journal_vouches(journal, client.base_url)

    def failed_everywhere(self, request_ids: Sequence[str], exc: BaseException) -> int:
        """A failure that ends every id: in JSON each id still gets its line."""
        self.display.close()
        if self.args.json:
            return self.report([Row(rid, error=exc) for rid in request_ids])
        self.error(exc)
        return exit_code([exc])

    # -- commands

    def naming(self) -> Naming | None:
        """The --name template as a naming function that also keeps ids apart."""
        template = getattr(self.args, "name", None)
        if template is None:
            return None

        def name(request_id: str, index: int, url: str) -> str:
            ext = Path(default_name(request_id, index, url)).suffix
            result = name_from_template(template, request_id, index, ext)
            owner = self.claimed.setdefault(result.casefold(), (request_id, index))
            if owner != (request_id, index):
                raise UnsafeFileNameError(
                    f"--name gives {result!r} to {owner[0]!r} video {owner[1]} too; "
                    "use {request_id} and {index} in the template",
                    request_id=request_id,
                )
            return result

        return name

    def download_policy(self) -> DownloadPolicy:
        args = self.args
        changes: dict[str, Any] = {"sha256": args.sha256}
        if args.retries is not None:
            changes["max_attempts"] = args.retries + 1
        if args.connect_timeout is not None:
            changes["connect_timeout"] = args.connect_timeout
        if args.read_timeout is not None:
            changes["read_timeout"] = args.read_timeout
        if args.limit_rate is not None:
            changes["max_bytes_per_second"] = args.limit_rate
        if args.force:
            changes["foreign_files"] = "replace"
        return attrs.evolve(CLI_DOWNLOAD, **changes)

    def downloading_client(self, journal: Path | str | None) -> AsyncClient:
        """A client with the download options of ``download`` and ``resume``."""
        args = self.args
        options: dict[str, Any] = {}
        if args.retries is not None:
            options["retry"] = attrs.evolve(DEFAULT_RETRY, max_attempts=args.retries + 1)
        return self.client(
            max_concurrent_requests=args.max_requests,
            max_concurrent_downloads=args.concurrency,
            download=self.download_policy(),
            journal=journal,
            **options,
        )

    async def download(self) -> int:
        args = self.args
        ids = self.ids
        journal = journal_path(args)
        try:
            async with self.downloading_client(journal) as client:
                dest = await check_output(args.output, "-o")
                await writable_journal(client)  # a bad one ends the command before any wait
                await self.preflight(client, ids)
                self.display.track(ids, downloading=True)
                await self.fetch_all(client, ids, dest, args.timeout)
        except (*_GLOBAL_ERRORS, DownloadError) as exc:
            return self.failed_everywhere(ids, exc)
        code = self.report()
        self.summary()
        return code

    async def fetch_all(
        self, client: AsyncClient, ids: list[str], dest: Path | str, timeout: float | None
    ) -> None:
        """Wait for the ids and download each as soon as its job succeeds; each row is
        printed the moment its id is finished."""
        outcomes = client.download_as_completed(
            ids, dest, timeout=timeout, progress=self.display.event, naming=self.naming()
        )
        no_clobber = getattr(self.args, "no_clobber", False)
        self.display.keep_foreign = no_clobber
        try:
            async with contextlib.aclosing(outcomes):
                async for outcome in outcomes:
                    row = Row.from_outcome(outcome, no_clobber=no_clobber)
                    # The files say which were reused: the live board shows it.
                    self.display.finished(
                        outcome.request_id, row.error, outcome.files, skipped=row.skipped
                    )
                    self.emit(row)
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
        missing = SiliconFlowError("no result came back for this id")
        for rid in ids:
            self.emit(Row(rid, error=missing))

    # -- the journal's commands

    def journal_or_usage(self, command: str) -> Path | str:
        path = journal_path(self.args)
        if path is None:
            raise UsageError(
                f"{command} needs a journal",
                f"pass --journal FILE, or -o DIR for the {DEFAULT_JOURNAL} of a download into DIR",
            )
        return path

    async def enqueue(self) -> int:
        args = self.args
        path = self.journal_or_usage("enqueue")
        ids = []
        for rid in self.ids:
            try:
                ids.append(check_request_id(rid))
            except SiliconFlowError as exc:
                raise UsageError(f"{exc}; nothing was recorded", "check the ids") from None
        dest = await check_output(args.output, "-o")
        async with open_journal(path) as journal:
            refuse_read_only(journal)
            records = await journal.accept(ids, dest=dest)
        await defer_for_workers(path, ids)  # a PostgreSQL journal: running workers start now
        for record in records:
            if args.json:
                self.out(
                    json.dumps(
                        {
                            "request_id": record.request_id,
                            "state": record.state.value,
                            "dest": record.dest,
                        }
                    )
                )
            else:
                self.out(f"{printable(record.request_id or record.job_key)}  {record.state}")
        how = f"-o {args.output}" if args.journal is None else f"--journal {journal_name(path)}"
        log.info(
            "recorded %d ids in %s; get their videos with: siliconflow-video resume %s",
            len(records),
            journal_name(path),
            how,
        )
        return EXIT_OK

    async def worker(self) -> int:
        return await run_worker_command(self.args, self.api_key, journal_path(self.args))

    async def resume(self) -> int:
        args = self.args
        path = self.journal_or_usage("resume")
        if isinstance(path, Path) and not path.exists():
            raise UsageError(f"there is no journal at {str(path)!r}", "check --journal or -o")
        unknown: list[JobRecord] = []
        try:
            async with self.downloading_client(path) as client:
                journal = await writable_journal(client)
                assert journal is not None
                jobs = await journal.jobs()
                unknown = [j for j in jobs if j.state is JobState.SUBMIT_UNKNOWN]
                plan = resume_plan(jobs)
                self.ids = [rid for ids in plan.values() for rid in ids]
                if self.ids:
                    await self.preflight(client, self.ids)
                    self.display.track(self.ids, downloading=True)
                    async with asyncio.TaskGroup() as tasks:
                        for dest, ids in plan.items():
                            tasks.create_task(self.fetch_all(client, ids, dest, args.timeout))
        except BaseExceptionGroup as group:
            return self.resume_failed(_first_leaf(group))
        except (*_GLOBAL_ERRORS, DownloadError) as exc:
            return self.resume_failed(exc)
        if not self.ids:
            log.info("nothing to resume in %s", journal_name(path))
        code = self.report()
        if unknown:
            self.unknown_submits(unknown)
            code = max(code, EXIT_FAILED) if code != EXIT_USAGE else code
        if self.ids:
            self.summary()
        return code

    def resume_failed(self, exc: BaseException) -> int:
        if isinstance(exc, (*_GLOBAL_ERRORS, DownloadError)):
            return self.failed_everywhere(self.ids, exc)
        raise exc

    def unknown_submits(self, jobs: Sequence[JobRecord]) -> None:
        """One line for the submits whose answer was lost: a person settles them."""
        keys = ", ".join(j.submit_key or j.job_key for j in jobs[:3])
        more = f" and {len(jobs) - 3} more" if len(jobs) > 3 else ""
        self.err(
            f"error: {len(jobs)} submits may have reached SiliconFlow without their answer "
            f"being recorded (submit_unknown: {keys}{more}); they are never sent again, as "
            "that could charge twice — find their requestIds in the SiliconFlow console "
            "('siliconflow-video jobs' lists them)"
        )

    async def jobs(self) -> int:
        args = self.args
        path = self.journal_or_usage("jobs")
        records = await asyncio.to_thread(read_jobs, path, unfinished=args.unfinished)
        for record in records:
            data = record.as_dict()
            if args.json:
                self.out(json.dumps(data))
                continue
            error = data["error"]
            cells = [
                printable(record.request_id or f"({record.job_key})"),
                record.state.value,
                printable(record.dest),
                " ".join(printable(p) for p in data["paths"]) or "-",
            ]
            if error is not None:
                cells.append(f"{error['type']}: {printable(error['message'])}")
            self.out("  ".join(cells))
        return EXIT_OK

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
            error = first.error
            if isinstance(error, MalformedResponseError) and error.not_json_at_all:
                error = NotSiliconFlowError.from_answer(error, client.base_url)
                return self.failed_everywhere(ids, error)
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
                await self._wait_all(client, ids, args.timeout)
        except _GLOBAL_ERRORS as exc:
            return self.failed_everywhere(ids, exc)
        return self.report()

    async def _wait_all(self, client: AsyncClient, ids: list[str], timeout: float | None) -> None:
        self.display.track(ids, downloading=False)
        completions = client.as_completed(ids, timeout=timeout, on_status=self.display.listener)
        async with contextlib.aclosing(completions):
            async for result in completions:
                self.display.finished(result.request_id, result.error)
                self.emit(Row.from_status(result.request_id, result.status, result.error))
        missing = SiliconFlowError("no result came back for this id")
        for rid in ids:
            self.emit(Row.from_status(rid, None, missing))

    async def submit(self) -> int:
        args = self.args
        if args.from_file is not None:
            return await self.submit_file()
        if not args.model or not args.prompt:
            missing = " and ".join(
                o for o, v in (("--model", args.model), ("--prompt", args.prompt)) if not v
            )
            raise UsageError(f"submit needs {missing}", "or --from-file FILE (see --help)")
        dest = Path(args.download) if args.download else None
        journal = journal_path(args)
        try:
            async with self.client(journal=journal) as client:
                if dest is not None:
                    # Before paying for a video, make sure it can be saved.
                    await check_destination(dest, "--download")
                await writable_journal(client)  # and that the journal can record it
                try:
                    rid = await client.submit(
                        model=args.model,
                        prompt=args.prompt,
                        image_size=args.image_size,
                        negative_prompt=args.negative_prompt,
                        image=args.image,
                        seed=args.seed,
                        dest=(dest or Path.cwd()) if journal is not None else None,
                    )
                except BadRequestError as exc:
                    if "image_size" in exc.api_message or "image size" in exc.api_message:
                        raise UsageError(
                            f"--image-size {args.image_size} was rejected: {exc.api_message}",
                            "choose a size the model accepts, e.g. 1280x720, 720x1280 or 960x960",
                        ) from None
                    raise
                self.submitted = rid
                self.ids = [rid]
                # At once, before any wait: a later Ctrl-C must not lose the id.
                if args.json:
                    waits = dest is not None or args.wait
                    self.out(
                        json.dumps(
                            {"request_id": rid, "submitted": True} if waits else {"request_id": rid}
                        )
                    )
                else:
                    self.out(rid)
                if dest is None and not args.wait:
                    return EXIT_OK
                log.info("submitted job %s", printable(rid))
                if dest is not None:
                    self.display.track([rid], downloading=True)
                    await self.fetch_all(client, [rid], dest, args.timeout)
                    return self.report()
                await self._wait_all(client, [rid], args.timeout)
                return self.report()
        except SiliconFlowError as exc:
            self.display.close()
            self.error(exc)
            return exit_code([exc])

    async def submit_file(self) -> int:
        """``submit --from-file``: each line's intent journaled before its POST, a few
        POSTs at a time, no line submitted twice across runs; then, with --download, every
        line's videos."""
        args = self.args
        for option in ("model", "prompt", "negative_prompt", "image", "seed"):
            if getattr(args, option) is not None:
                flag = "--" + option.replace("_", "-")
                raise UsageError(
                    f"{flag} cannot be combined with --from-file",
                    "put the field in each line of the file instead",
                )
        lines = await asyncio.to_thread(read_submit_file, args.from_file)
        journal_file = journal_path(args)
        if journal_file is None:
            raise UsageError(
                "submit --from-file needs a journal, so that a rerun never pays for a line twice",
                f"pass --journal FILE (or --download DIR: it keeps DIR/{DEFAULT_JOURNAL})",
            )
        dest = Path(args.download) if args.download else Path.cwd()
        results: list[tuple[SubmitLine, str | None, BaseException | None]] = []
        try:
            async with self.client(journal=journal_file) as client:
                if args.download:
                    await check_destination(dest, "--download")
                journal = await writable_journal(client)
                assert journal is not None
                known = {j.submit_key: j for j in await journal.jobs() if j.submit_key}
                submits = _Submits(self, client, known, dest)
                async with asyncio.TaskGroup() as tasks:
                    for line in lines:
                        tasks.create_task(submits.one(line))
                results = submits.results
                rids = list(dict.fromkeys(rid for _, rid, _ in results if rid is not None))
                errors = [err for _, _, err in results if err is not None]
                stopped = submits.stopped
                # No balance (402) stops the POSTs, not the status calls: the jobs made
                # before it are still waited for and downloaded.
                if stopped is not None and not (
                    isinstance(stopped, PaymentRequiredError) and args.download and rids
                ):
                    if rids:
                        log.info(
                            "the jobs submitted are in the journal: get their videos with "
                            "siliconflow-video resume --journal %s; the lines not sent go "
                            "with the same command run again",
                            journal_name(journal_file),
                        )
                    raise stopped
                if stopped is not None:
                    self.error(stopped)
                    log.info(
                        "no more lines were sent; they go with the same command run again; "
                        "the %d jobs made are downloaded now",
                        len(rids),
                    )
                if args.download and rids:
                    self.ids = rids
                    self.display.track(rids, downloading=True)
                    await self.fetch_all(client, rids, dest, args.timeout)
                    code = self.report()
                    self.summary()
                    return max(code, exit_code(errors))
        except BaseExceptionGroup as group:
            raise _first_leaf(group) from None
        self.display.close()
        return exit_code(errors)

    async def demo(self) -> int:
        from ._demo import demo_report, run_demo

        dest = Path(self.args.output)
        await check_destination(dest, "-o")

        def on_submitted(ids: list[str]) -> None:
            log.info("demo: submitted %d jobs to the fake SiliconFlow", len(ids))
            self.ids = ids
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
            raise  # stdout is gone: run() ends quietly
        except UsageError as exc:
            self.display.close()
            self.error(exc)
            return EXIT_USAGE
        except (SiliconFlowError, OutputError) as exc:
            self.output_failed = isinstance(exc, OutputError)
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

    async def run_until_signalled(self) -> int:
        """:meth:`run`, with SIGTERM stopping it as Ctrl-C does (partial files kept)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def terminate() -> None:
            self.terminated = True
            if task is not None:
                task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, terminate)
        try:
            return await self.run()
        except asyncio.CancelledError:
            if self.terminated:
                return EXIT_TERMINATED
            raise
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    def stopped(self, how: str) -> str:
        """The one line for a run stopped by Ctrl-C ("interrupted") or SIGTERM."""
        if self.submitted:
            line = (
                f"{how} — job {self.submitted} goes on at SiliconFlow; get its "
                f"videos later with: siliconflow-video download {self.submitted}"
            )
            if self.args.command == "submit" and self.args.download:
                line += f" -o {self.args.download} (partial downloads resume)"
            return line
        return f"{how} — partial downloads are kept and will resume on the next run"


def _same_terminal(one: TextIO, other: TextIO) -> bool:
    """Whether both streams are the same terminal (stdout and stderr in one window)."""
    try:
        if not (one.isatty() and other.isatty()):
            return False
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group: a task group's one failure, unwrapped."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


#: POSTs of submit --from-file in flight at once: well under any account's limit, and the
#: client's retries honour a 429's Retry-After.
SUBMIT_CONCURRENCY = 4


class _Submits:
    """The lines of one ``submit --from-file`` run, each submitted at most once."""

    def __init__(
        self, cli: Cli, client: AsyncClient, known: dict[str, JobRecord], dest: Path
    ) -> None:
        self.cli = cli
        self.client = client
        self.known = known
        self.dest = dest
        self.slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)
        self.results: list[tuple[SubmitLine, str | None, BaseException | None]] = []
        #: An error no line can escape (a rejected key, no balance): no new POST after it.
        self.stopped: SiliconFlowError | None = None

    def report(
        self,
        line: SubmitLine,
        result: str,
        request_id: str | None,
        error: BaseException | None = None,
    ) -> None:
        self.results.append((line, request_id, error))
        cli = self.cli
        if cli.args.json:
            data: dict[str, Any] = {
                "line": line.number,
                "submit_key": line.key,
                "request_id": request_id,
                "result": result,
            }
            if error is not None:
                data["error"] = {"type": type(error).__name__, "message": self.words(error, result)}
            cli.out(json.dumps(data))
        else:
            text = f"line {line.number}  {request_id or '-'}  {result}"
            if error is not None:
                text += f": {self.words(error, result)}"
            cli.out(text)

    def words(self, error: BaseException, result: str) -> str:
        what = self.cli.explain(error)[0]
        if result == "submit_unknown" and not isinstance(error, SubmitUnknownError):
            # "cannot reach" alone would read as "nothing was sent": it may have been.
            what += "; the submit may have reached SiliconFlow, so it is never sent again"
        return what

    async def state_of(self, key: str) -> str:
        journal = await self.client.journal()
        assert journal is not None
        for job in await journal.jobs():
            if job.submit_key == key:
                return job.state.value
        return "failed"

    async def one(self, line: SubmitLine) -> None:
        job = self.known.get(line.key)
        if job is not None and job.request_id is not None:
            self.report(line, "already_submitted", job.request_id)
            return
        if job is not None and job.state in (JobState.SUBMIT_UNKNOWN, JobState.SUBMITTING):
            self.report(line, job.state.value, None, _unknown(job))
            return
        async with self.slots:
            if self.stopped is not None:
                self.report(line, "not_sent", None)  # a rerun with the same journal sends it
                return
            try:
                rid = await self.client.submit(**line.fields, dest=self.dest, submit_key=line.key)
            except SubmitUnknownError as exc:
                self.report(line, "submit_unknown", None, exc)
                return
            except _GLOBAL_ERRORS as exc:
                if isinstance(exc, APIConnectionError) and exc.maybe_processed:
                    # The connection broke under this POST (a reset): this line's trouble
                    # (it may have reached SiliconFlow); "cannot connect" stops them all.
                    self.report(line, await self.state_of(line.key), None, exc)
                    return
                # Every other line would meet it too: no new POST. This line may have
                # reached SiliconFlow (a dropped connection): say what the journal says.
                self.stopped = self.stopped or exc
                state = await self.state_of(line.key)
                self.report(line, state, None, exc)
                return
            except SiliconFlowError as exc:
                # "failed" only when the journal knows no job was made; a POST that may
                # have reached SiliconFlow reads submit_unknown (never to be resent by hand).
                self.report(line, await self.state_of(line.key), None, exc)
                return
        self.report(line, "submitted", rid)


def _unknown(job: JobRecord) -> SubmitUnknownError:
    return SubmitUnknownError(
        f"a submit with this key is journaled as {job.state.value} and may already have "
        "reached SiliconFlow; it is not sent again (that could charge twice)",
        job_key=job.job_key,
    )


async def writable_journal(client: AsyncClient) -> Journal | None:
    """The client's journal, opened; refused at once when it cannot be written (rather
    than at its first change, after a status call)."""
    journal = await client.journal()
    if journal is not None:
        refuse_read_only(journal)
    return journal


def refuse_read_only(journal: Journal) -> None:
    if journal.read_only:
        path = str(getattr(journal, "path", "the journal"))
        raise JournalReadOnlyError(
            f"journal {path!r} cannot be written (the file or its folder is read-only)",
            path=path,
        )


# --- the destination -------------------------------------------------------------------


def _try_writing(dest: Path, option: str) -> None:
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        message = disk_message(exc, "create the folder", dest)
        raise DestinationError(message, option=option, path=str(dest)) from None
    try:
        fd, name = tempfile.mkstemp(prefix=".siliconflow-video-check-", dir=dest)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        probe = dest / ".siliconflow-video-check"
        message = disk_message(exc, "write", probe)
        raise DestinationError(message, option=option, path=str(dest)) from None


async def check_output(text: str, option: str) -> Path | str:
    """``-o``'s destination, checked before any work: a folder (made, and written in once),
    or an ``s3://BUCKET/PREFIX`` (well formed, and the ``[s3]`` extra installed)."""
    if text.lower().startswith("s3://"):
        destination(text)  # a ConfigurationError: one line, exit code 2
        return text
    dest = Path(text)
    await check_destination(dest, option)
    return dest


async def check_destination(dest: Path, option: str) -> None:
    """Create ``dest`` and write in it once, so a bad folder fails the command before any
    waiting (or paying) rather than when the first video is ready. The messages are the
    downloader's own."""
    await asyncio.to_thread(_try_writing, dest, option)


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
    try:
        args = parse(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if sys.stdout is None:  # started with >&-: the results would have nowhere to go
        write_text(
            sys.stderr,
            "error: stdout is closed, so the results cannot be printed — "
            "run with stdout open (redirect it to a file or /dev/null)",
        )
        return EXIT_USAGE
    # The demo uses the fake's own key and never reads the environment's.
    api_key = None if args.command == "demo" else args.api_key or os.environ.get(API_KEY_ENV)
    redactor = RedactingFilter([api_key, api_key.strip()] if api_key else [])
    display = _make_display(args.quiet)
    cli = Cli(args, display, redactor.redact, api_key, sys.stdout)
    display.explain = cli.explain  # rows say why an id failed, with the real base URL
    with _logging_to(display, redactor, verbose=args.verbose, quiet=args.quiet):
        if args.command in ("download", "enqueue", "status", "wait"):
            # Before the event loop: a Ctrl-C while reading stdin must stop the read.
            try:
                cli.ids = collect_ids(args)
            except UsageError as exc:
                cli.error(exc)
                return EXIT_USAGE
        try:
            code = asyncio.run(cli.run_until_signalled())
        except KeyboardInterrupt:
            # asyncio.run cancelled the command first: downloads stopped cleanly and kept
            # their .part files; the rows of the ids that had finished are printed.
            display.close()
            cli.err(cli.stopped("interrupted"))
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # stdout was closed early (| head): nothing more to say to anyone.
            _silence_stdout()
            return EXIT_FAILED
        if cli.terminated:
            display.close()
            cli.err(cli.stopped("terminated"))
        if cli.output_failed:
            _silence_stdout()
        return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush fails no more."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
