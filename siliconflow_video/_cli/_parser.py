"""The argument parser of ``siliconflow-video``, and the ids its commands read (from the
arguments, from files, or from stdin)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._config import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from ._explain import UsageError

__all__ = ["build_parser", "collect_ids"]


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
    from .. import __version__

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
