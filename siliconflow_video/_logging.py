"""The package's logger and a filter that keeps secrets out of log output.

The library installs no handlers: applications decide where logs go. The CLI attaches
:class:`RedactingFilter` to its handler so the API key never appears, whatever the verbosity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

logger = logging.getLogger("siliconflow_video")

REDACTED = "***"


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
