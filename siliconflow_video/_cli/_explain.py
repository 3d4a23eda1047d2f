"""An error, in words for a person at a shell: ``what happened — what to do``, and an exit code.

One table maps error classes to their explanation; :func:`explain` walks the error's MRO, so
the most specific class with an entry wins (``VideoURLExpiredError`` before ``DownloadError``,
``APITimeoutError`` before ``APIConnectionError``), as httpx's ``map_httpcore_exceptions``
does. A new error class needs one entry here, not a new branch in a chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from .._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from .._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    ForeignFileError,
    JobFailedError,
    JournalBusyError,
    JournalCorruptError,
    JournalError,
    JournalForeignError,
    JournalPathError,
    JournalReadOnlyError,
    JournalUnavailableError,
    JournalVersionError,
    LeaseHeldError,
    MalformedResponseError,
    NotFoundError,
    NotSiliconFlowError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SiliconFlowError,
    SubmitUnknownError,
    UnsafeFileNameError,
    VideoURLExpiredError,
    WaitTimeoutError,
)

__all__ = [
    "CONFIG_ERRORS",
    "JOURNAL_SETUP_ERRORS",
    "DestinationError",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "OutputError",
    "UsageError",
    "exit_code",
    "explain",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Every problem was a --timeout running out: the jobs go on, so a later run may succeed.
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM, as a shell reports a process the signal ended.
EXIT_TERMINATED = 143


class UsageError(Exception):
    """A problem with the command line or the environment: exit 2 with one line."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo


class DestinationError(DownloadError):
    """The folder given by ``option`` (``-o``, ``--download``) cannot take the videos; found
    before any waiting (or paying)."""

    def __init__(self, message: str, *, option: str, path: str) -> None:
        super().__init__(message, path=path)
        self.option = option


class OutputError(Exception):
    """stdout cannot take the results (a full disk behind ``> file``): exit 1 with one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: A journal that cannot be used at all: the setup is wrong, not one id.
JOURNAL_SETUP_ERRORS = (
    JournalBusyError,
    JournalCorruptError,
    JournalForeignError,
    JournalPathError,
    JournalReadOnlyError,
    JournalUnavailableError,
    JournalVersionError,
)

# Errors that say the setup is wrong rather than one id: they exit 2.
CONFIG_ERRORS = (
    ConfigurationError,
    AuthenticationError,
    NotFoundError,
    NotSiliconFlowError,
    UsageError,
    *JOURNAL_SETUP_ERRORS,
)


@attrs.frozen
class Where:
    """What an explanation may mention: the base URL, and where the key came from."""

    base_url: str
    key_from: str = API_KEY_ENV


#: (error, where) -> (what happened, what to do)
Explainer = Callable[[Any, Where], tuple[str, str]]


def _usage(exc: UsageError, where: Where) -> tuple[str, str]:
    return exc.what, exc.todo


def _output(exc: OutputError, where: Where) -> tuple[str, str]:
    return (
        f"cannot write the results to stdout: {exc.reason}",
        "free some space where stdout goes, or send it elsewhere (> another/file)",
    )


def _authentication(exc: AuthenticationError, where: Where) -> tuple[str, str]:
    return (
        "the API key was rejected (HTTP 401)",
        f"check {where.key_from}, and that it belongs to this base URL's region "
        f"(.cn vs .com; the base URL is {where.base_url})",
    )


def _payment(exc: PaymentRequiredError, where: Where) -> tuple[str, str]:
    return (
        f"the account has no balance left (HTTP 402): {exc.api_message}",
        "top up the account in the SiliconFlow console, then run again",
    )


def _permission(exc: PermissionDeniedError, where: Where) -> tuple[str, str]:
    return (
        f"the API refused access (HTTP 403): {exc.api_message}",
        "the account may need real-name verification, or no access to this model",
    )


def _not_found(exc: NotFoundError, where: Where) -> tuple[str, str]:
    return (
        f"{where.base_url} has no video API (HTTP 404)",
        f"check --base-url or {BASE_URL_ENV}; it should look like {DEFAULT_BASE_URL}",
    )


def _bad_request(exc: BadRequestError, where: Where) -> tuple[str, str]:
    code = f", code {exc.code}" if exc.code is not None else ""
    if exc.request_id:
        return (
            f"the API rejected request id {exc.request_id!r}: {exc.api_message} (HTTP 400{code})",
            "check the id, and that it was created with this key and base URL",
        )
    return (
        f"the API rejected the request: {exc.api_message} (HTTP 400{code})",
        "check --model, --prompt, --image-size and --image",
    )


def _rate_limit(exc: RateLimitError, where: Where) -> tuple[str, str]:
    return (
        "the API kept answering 'too many requests' (HTTP 429)",
        "wait a minute and run again, or lower --max-requests",
    )


def _server(exc: ServerError, where: Where) -> tuple[str, str]:
    return (
        f"SiliconFlow answered HTTP {exc.status_code} ({exc.api_message})",
        "SiliconFlow is having trouble; run again later",
    )


def _status(exc: APIStatusError, where: Where) -> tuple[str, str]:
    return f"the API answered: {exc}", "check the ids and options, then run again"


def _api_timeout(exc: APITimeoutError, where: Where) -> tuple[str, str]:
    return (
        f"no answer from {where.base_url} in time",
        "check your network or --base-url, or run again later",
    )


def _connection(exc: APIConnectionError, where: Where) -> tuple[str, str]:
    return f"cannot reach {where.base_url}", "check your network or --base-url"


def _malformed(exc: MalformedResponseError, where: Where) -> tuple[str, str]:
    return (
        f"the API sent an unexpected answer: {exc}",
        "run again later; if it persists, please report it",
    )


def _job_failed(exc: JobFailedError, where: Where) -> tuple[str, str]:
    return (
        f"job {exc.request_id!r} failed: {exc.reason or 'no reason given'}",
        "nothing to download; change the prompt or parameters and submit a new job",
    )


def _wait_timeout(exc: WaitTimeoutError, where: Where) -> tuple[str, str]:
    if exc.last_status is None:
        # Nothing was read about the job: whether it exists, or goes on, is not known.
        return (
            str(exc),
            f"check the network and the id ('siliconflow-video status ID' asks {where.base_url} "
            "once), then run again, or raise --timeout",
        )
    return (
        str(exc),
        "the job goes on at SiliconFlow; run the command again later, or raise --timeout",
    )


def _url_expired(exc: VideoURLExpiredError, where: Where) -> tuple[str, str]:
    return (
        str(exc),
        "SiliconFlow gave no working URL for this video, so a rerun cannot fetch it; "
        "submit the job again if you still need it",
    )


RESUME = "run the same command again: finished files are kept, partial ones resume"


def _destination(exc: DestinationError, where: Where) -> tuple[str, str]:
    return str(
        exc
    ), f"choose another {exc.option} folder, or fix its permissions or free some space"


def _download(exc: DownloadError, where: Where) -> tuple[str, str]:
    code = exc.status_code
    if exc.request_id is None:  # the destination itself, before any download
        todo = "choose another -o folder, or fix its permissions or free some space"
    elif code is None and isinstance(exc.__cause__, OSError):  # our own disk
        todo = (
            "fix the destination (free space, write permission, or another -o folder), "
            f"then {RESUME}"
        )
    elif code is None or code in (408, 429) or code >= 500:  # the network or the host
        todo = f"the video host or the network is having trouble; later, {RESUME}"
    elif code in (404, 410):
        todo = (
            f"the video host no longer has this video (HTTP {code}), so a rerun cannot "
            "fetch it; submit the job again if you still need it"
        )
    else:
        todo = (
            f"the video host refused the download (HTTP {code}) and a rerun will be refused "
            "too; check for a proxy or firewall in the way, or submit the job again"
        )
    return str(exc), todo


def _not_siliconflow(exc: NotSiliconFlowError, where: Where) -> tuple[str, str]:
    return (
        exc.message,  # about the base URL, not one id: many ids make one line
        f"check --base-url or {BASE_URL_ENV} (SiliconFlow's is {DEFAULT_BASE_URL}, or "
        "https://api.siliconflow.com/v1 for accounts on siliconflow.com)",
    )


def _foreign(exc: ForeignFileError, where: Where) -> tuple[str, str]:
    # The library's advice names its own knob; the command line has options for it.
    what = str(exc).partition(". Move it away")[0]
    return (
        what,
        "move it away, or run again with --force to replace it (--no-clobber: keep it "
        "and skip that video)",
    )


def _unsafe_name(exc: UnsafeFileNameError, where: Where) -> tuple[str, str]:
    return str(exc), "this id cannot name a file; check the id"


def _journal_corrupt(exc: JournalCorruptError, where: Where) -> tuple[str, str]:
    return str(exc), "give --journal another file (keep the damaged one: nothing is deleted)"


def _journal_foreign(exc: JournalForeignError, where: Where) -> tuple[str, str]:
    return str(exc), "give --journal a file of its own"


def _journal_version(exc: JournalVersionError, where: Where) -> tuple[str, str]:
    return str(exc), "pip install -U siliconflow-video, then run again"


def _journal_read_only(exc: JournalReadOnlyError, where: Where) -> tuple[str, str]:
    return (
        str(exc),
        "make the journal (and its folder) writable, or read it with "
        "'siliconflow-video jobs --journal FILE'",
    )


def _journal_busy(exc: JournalBusyError, where: Where) -> tuple[str, str]:
    return str(exc), "let the other process finish (or stop it), then run again"


def _journal_path(exc: JournalPathError, where: Where) -> tuple[str, str]:
    return str(exc), "check --journal (or -o)"


def _journal_unavailable(exc: JournalUnavailableError, where: Where) -> tuple[str, str]:
    return str(exc), "give --journal a file path"


def _submit_unknown(exc: SubmitUnknownError, where: Where) -> tuple[str, str]:
    return (
        str(exc),
        "find its requestId in the SiliconFlow console and download it by id, or give it up",
    )


def _lease_held(exc: LeaseHeldError, where: Where) -> tuple[str, str]:
    return str(exc), "another siliconflow-video is working on it; let it finish"


def _journal(exc: JournalError, where: Where) -> tuple[str, str]:
    return str(exc), "check the journal's disk and permissions, then run again"


def _configuration(exc: ConfigurationError, where: Where) -> tuple[str, str]:
    return str(exc), "check the command's options (see --help)"


def _library(exc: SiliconFlowError, where: Where) -> tuple[str, str]:
    return str(exc), "run again; add -v for details"


def _unexpected(exc: BaseException, where: Where) -> tuple[str, str]:
    return (
        f"unexpected {type(exc).__name__}: {exc}",
        "please report this (run with -v for details)",
    )


_EXPLAINERS: dict[type[BaseException], Explainer] = {
    UsageError: _usage,
    OutputError: _output,
    AuthenticationError: _authentication,
    PaymentRequiredError: _payment,
    PermissionDeniedError: _permission,
    NotFoundError: _not_found,
    BadRequestError: _bad_request,
    RateLimitError: _rate_limit,
    ServerError: _server,
    APIStatusError: _status,
    APITimeoutError: _api_timeout,
    APIConnectionError: _connection,
    NotSiliconFlowError: _not_siliconflow,
    MalformedResponseError: _malformed,
    JobFailedError: _job_failed,
    WaitTimeoutError: _wait_timeout,
    VideoURLExpiredError: _url_expired,
    DestinationError: _destination,
    ForeignFileError: _foreign,
    DownloadError: _download,
    UnsafeFileNameError: _unsafe_name,
    JournalCorruptError: _journal_corrupt,
    JournalForeignError: _journal_foreign,
    JournalVersionError: _journal_version,
    JournalReadOnlyError: _journal_read_only,
    JournalBusyError: _journal_busy,
    JournalPathError: _journal_path,
    JournalUnavailableError: _journal_unavailable,
    SubmitUnknownError: _submit_unknown,
    LeaseHeldError: _lease_held,
    JournalError: _journal,
    ConfigurationError: _configuration,
    SiliconFlowError: _library,
}


def explain(exc: BaseException, base_url: str, *, key_from: str = API_KEY_ENV) -> tuple[str, str]:
    """(what happened, what to do) for an error, in words for a person at a shell.

    ``key_from`` names where the key came from (``--api-key`` or the environment), for the
    advice on a rejected key. Errors about the whole setup (key, network, base URL) do not
    name an id, so that many ids failing the same way make one line.
    """
    where = Where(base_url, key_from)
    for cls in type(exc).__mro__:
        explainer = _EXPLAINERS.get(cls)
        if explainer is not None:
            return explainer(exc, where)
    return _unexpected(exc, where)


def exit_code(errors: Iterable[BaseException | None]) -> int:
    """2 if any error is about the setup, else 1 if any error other than a timeout, else
    3 if a timeout ran out, else 0."""
    found = [e for e in errors if e is not None]
    if any(isinstance(e, CONFIG_ERRORS) for e in found):
        return EXIT_USAGE
    if any(not isinstance(e, WaitTimeoutError) for e in found):
        return EXIT_FAILED
    return EXIT_TIMEOUT if found else EXIT_OK
