"""The argument parser of ``siliconflow-video``, and the ids its commands read (from the
arguments, from files, or from stdin)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from .._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from .._exceptions import UnsafeFileNameError
from .._naming import safe_stem, target_path
from .._version import __version__
from ._explain import UsageError
from ._types import non_negative_int, positive_int
from ._worker import add_worker_command

__all__ = [
    "DEFAULT_JOURNAL",
    "IMAGE_SIZE",
    "build_parser",
    "collect_ids",
    "journal_path",
    "name_from_template",
    "parse",
]

#: The journal ``download -o DIR`` keeps unless told otherwise: hidden, in DIR, mode 0600.
DEFAULT_JOURNAL = ".siliconflow-video.journal"

#: What an --image-size must look like; which sizes a model takes is SiliconFlow's to say.
IMAGE_SIZE = re.compile(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}")
#: The fields a --name template may use.
NAME_FIELDS = ("request_id", "index", "ext")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


#: --limit-rate suffixes, as curl reads them: powers of 1024.
_RATE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _rate(text: str) -> float:
    """``--limit-rate``: bytes per second, with an optional k/M/G suffix (curl's way)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)[bB]?\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate like 500k, 2M or 1G (bytes per second)"
        )
    value = float(match[1]) * _RATE_UNITS[match[2].lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte per second, got {text!r}")
    return value


def _folder(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder name is empty")
    return text


def _image_size(text: str) -> str:
    if not IMAGE_SIZE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size like 1280x720 (width x height in pixels)"
        )
    return text


def name_from_template(template: str, request_id: str, index: int, ext: str) -> str:
    """The file name a --name template gives one video; ``{request_id}`` is the id made safe
    for a file name (as in the default names). Raises KeyError, ValueError or IndexError
    for a template that does not format."""
    return template.format(request_id=safe_stem(request_id), index=index, ext=ext)


def _name_template(text: str) -> str:
    try:
        sample = name_from_template(text, "0123abcd-sample", 0, ".mp4")
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + f + "}" for f in NAME_FIELDS)
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable template ({type(exc).__name__}: {exc}); it may use {fields}"
        ) from None
    try:
        target_path(Path("videos"), sample)
    except UnsafeFileNameError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} gives unsafe names: {exc}") from None
    return text


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
        help="read ids from FILE ('-': stdin): separated by newlines, spaces or commas, "
        "# starts a comment; may be repeated",
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON Lines on stdout: one object per id, printed as soon as it is known",
    )


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop waiting for the jobs after S seconds: the ids not finished by then end "
        "with exit 3 (they go on at SiliconFlow), downloads already under way finish "
        "(default: no limit)",
    )


def _add_max_requests(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-requests",
        type=positive_int,
        default=16,
        metavar="N",
        help="at most N API requests in flight (default: 16)",
    )


def _add_journal(parser: argparse.ArgumentParser, *, default_in: str | None) -> None:
    where = (
        f"default: {default_in}/{DEFAULT_JOURNAL}"
        if default_in
        else f"default: DIR/{DEFAULT_JOURNAL} with --download DIR, else none"
    )
    parser.add_argument(
        "--journal",
        type=_folder,
        metavar="FILE",
        help="record every id and each step in this SQLite file (created 0600), so that "
        f"'siliconflow-video resume' finishes the work after a crash ({where})",
    )
    if default_in:
        parser.add_argument(
            "--no-journal",
            action="store_true",
            help=f"keep no journal (no {DEFAULT_JOURNAL} in {default_in})",
        )


def _add_download_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="at most N videos downloading at once (default: 4)",
    )
    parser.add_argument(
        "--sha256",
        action="store_true",
        help="compute each video's sha256 while it downloads (costs about as much CPU as "
        "the download; printed with --json)",
    )
    parser.add_argument(
        "--name",
        type=_name_template,
        metavar="TEMPLATE",
        help="file names from TEMPLATE, e.g. '{request_id}_{index}{ext}' (the default); "
        "{request_id} is the id made safe for a file name, {ext} the video's suffix",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        metavar="N",
        help="retry a failing API request or video transfer up to N times "
        "(default: 3 per API request, 7 per video)",
    )
    parser.add_argument(
        "--limit-rate",
        type=_rate,
        metavar="RATE",
        help="download at most RATE bytes per second, all videos together, e.g. 500k, "
        "2M (k, M, G: 1024, 1024², 1024³ bytes)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--force",
        action="store_true",
        help="replace a file already at a video's name that siliconflow-video did not "
        "download as that video (by default such a file is left alone and the id fails)",
    )
    existing.add_argument(
        "--no-clobber",
        action="store_true",
        help="keep such a file and skip its video: the id is reported as skipped, not "
        "failed (wget -nc); the file is not checked",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        metavar="S",
        help="give up connecting to the video host after S seconds (default: 30)",
    )
    parser.add_argument(
        "--read-timeout",
        type=_positive_float,
        metavar="S",
        help="give up on a video host silent for S seconds (default: 60)",
    )
    _add_timeout(parser)
    _add_max_requests(parser)
    _add_json(parser)


def journal_path(args: argparse.Namespace) -> Path | str | None:
    """The journal a command uses: ``--journal FILE`` (or a ``postgresql://`` URL, kept as
    text: a Path would fold its ``//``), else (unless ``--no-journal``) the hidden one in
    ``-o DIR`` (or ``--download DIR``), else none."""
    given = getattr(args, "journal", None)
    if given:
        return str(given) if "://" in str(given) else Path(given)
    if getattr(args, "no_journal", False):
        return None
    folder = getattr(args, "output", None) or getattr(args, "download", None)
    if folder is None or str(folder).lower().startswith("s3://"):
        return None  # a bucket holds no journal: --journal says where one is
    return Path(folder) / DEFAULT_JOURNAL


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``siliconflow-video``."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The main parser, and each command's by name."""
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog="siliconflow-video",
        description="Wait for SiliconFlow video jobs and download every video.",
        epilog="exit codes: 0 all succeeded, 1 a job or download failed, 2 usage or "
        "configuration error, 3 --timeout ran out (the jobs go on), 130 interrupted, "
        f"143 terminated. The key is read from {API_KEY_ENV}. "
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
        type=_folder,
        default=".",
        metavar="DIR",
        help="folder for the videos, created if needed (default: the current folder)",
    )
    _add_journal(download, default_in="DIR")
    _add_download_options(download)

    enqueue = commands.add_parser(
        "enqueue",
        parents=[common],
        help="record ids in a journal for a later 'resume', and return at once",
        description="Record every id, with DIR as its destination, in the journal (the "
        f"hidden {DEFAULT_JOURNAL} in DIR unless --journal is given); nothing is asked of "
        "SiliconFlow. 'siliconflow-video resume' then waits for them and downloads them.",
    )
    _add_ids(enqueue)
    enqueue.add_argument(
        "-o",
        "--output",
        type=_folder,
        default=".",
        metavar="DIR",
        help="folder the videos go to when resumed (default: the current folder)",
    )
    _add_journal(enqueue, default_in="DIR")
    _add_json(enqueue)

    resume = commands.add_parser(
        "resume",
        parents=[common],
        help="finish every unfinished id of a journal",
        description="Wait for and download every unfinished id recorded in the journal, "
        "each into the folder recorded with it; finished files are kept, partial ones "
        "resume. Submits whose answer was lost (submit_unknown) are listed, never sent "
        "again. Exit codes as for download.",
    )
    resume.add_argument(
        "-o",
        "--output",
        type=_folder,
        metavar="DIR",
        help=f"resume the journal of a download into DIR (DIR/{DEFAULT_JOURNAL})",
    )
    resume.add_argument(
        "--journal", type=_folder, metavar="FILE", help="the journal to resume (or -o DIR)"
    )
    _add_download_options(resume)

    jobs = commands.add_parser(
        "jobs",
        parents=[common],
        help="list the jobs a journal holds (reads only; no key needed)",
        description="Print one line per job of the journal: requestId, state, destination, "
        "paths and error (--json: one object per job, URLs without their query strings). "
        "Works on a read-only journal and without an API key.",
    )
    jobs.add_argument(
        "-o",
        "--output",
        type=_folder,
        metavar="DIR",
        help=f"list the journal of a download into DIR (DIR/{DEFAULT_JOURNAL})",
    )
    jobs.add_argument(
        "--journal", type=_folder, metavar="FILE", help="the journal to read (or -o DIR)"
    )
    jobs.add_argument("--unfinished", action="store_true", help="only the jobs not done or failed")
    _add_json(jobs)

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
    submit.add_argument("--model", help="e.g. Wan-AI/Wan2.2-T2V-A14B (required)")
    submit.add_argument("--prompt", help="what the video shows (required)")
    submit.add_argument(
        "--image-size",
        type=_image_size,
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
        type=_folder,
        metavar="DIR",
        help="wait for the job and download its videos into DIR (checked before submitting)",
    )
    submit.add_argument(
        "--from-file",
        metavar="FILE",
        help='submit one job per line of FILE, JSON Lines: {"model": ..., "prompt": ..., '
        '"image_size", "negative_prompt", "image", "seed", "key"}; with a journal '
        "a rerun submits no line twice (a line is known by its key, else its content)",
    )
    _add_journal(submit, default_in=None)
    submit.add_argument(
        "--no-journal",
        action="store_true",
        help=f"with --download DIR, keep no journal (no {DEFAULT_JOURNAL} in DIR)",
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
        type=_folder,
        default="siliconflow-demo",
        metavar="DIR",
        help="folder for the demo videos (default: ./siliconflow-demo)",
    )
    _add_json(demo)
    worker = add_worker_command(commands, common)
    return parser, {
        "download": download,
        "enqueue": enqueue,
        "resume": resume,
        "jobs": jobs,
        "status": status,
        "wait": wait,
        "submit": submit,
        "demo": demo,
        "worker": worker,
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line; exits 2 (through argparse) with the usage of the command
    concerned for a bad one."""
    parser, commands = _build()
    args, extra = parser.parse_known_args(argv)
    # An option the command does not know: the command's own usage, not the main one.
    command = commands[args.command]
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.quiet and args.verbose:
        command.error("-q and -v cannot be used together: choose one")
    return args


def _read_lines(name: str) -> list[str]:
    """Ids from a file or stdin: blank lines and # comments (whole-line or inline) skipped,
    several ids on a line separated by commas or spaces."""
    if name == "-":
        if sys.stdin.isatty():
            print(
                "reading request ids from stdin, one per line; end with Ctrl-D",
                file=sys.stderr,
            )
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
        ids += [rid for rid in re.split(r"[\s,]+", line.partition("#")[0]) if rid]
    return ids


def collect_ids(args: argparse.Namespace) -> list[str]:
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
