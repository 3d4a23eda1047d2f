"""Argument types shared by the subcommands' parsers: each a clear usage error (argparse's
"invalid value") for what it refuses."""

from __future__ import annotations

import argparse

__all__ = ["non_negative_int", "port", "positive_int"]


def positive_int(text: str) -> int:
    return _whole(text, least=1)


def non_negative_int(text: str) -> int:
    return _whole(text, least=0)


def _whole(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, got {value}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value
