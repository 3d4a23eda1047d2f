"""The package's logger and a filter that keeps secrets out of log output.

The library installs no handlers: applications decide where logs go. The CLI attaches
:class:`RedactingFilter` to its handler so the API key never appears, whatever the verbosity.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

logger = logging.getLogger("siliconflow_video")

REDACTED = "***"

#: The attribute a log record carries when a download waits for another process (holding
#: the video's ``.part`` lock): the request id, for a progress display to show it.
WAITING_FOR = "siliconflow_video_waiting_for"

_URL_QUERY = re.compile(r"""(\w+://[^\s?#'"<>]*)[?#][^\s'"<>]*""")


def redact_url(url: str) -> str:
    """``scheme://host/path`` of ``url``: the query of a signed URL is a credential."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}{parts.path}"


def scrub_urls(text: str) -> str:
    """``text`` with the query string of every URL in it dropped: exception texts from
    libraries may quote a whole signed URL."""
    return _URL_QUERY.sub(r"\1", text)


class RedactingFilter(logging.Filter):
    """Replaces every given secret in a record's final message with ``***``.

    Attach it to a *handler* (filters on a logger do not see its children's records).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True
