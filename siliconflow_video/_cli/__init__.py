"""The ``siliconflow-video`` command line (also ``python -m siliconflow_video``).

``_parser`` reads the command line, ``_commands`` runs it, ``_explain`` turns errors into
one line and an exit code, ``_rows`` prints the results, ``_progress`` the display on
stderr, and ``_demo`` the offline demo. Nothing here is imported by ``siliconflow_video``
itself: the library never loads rich or argparse.
"""

from __future__ import annotations

import sys

from ._commands import INTERRUPTED, run
from ._explain import EXIT_INTERRUPTED
from ._rows import write_text

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code (the console script exits with it)."""
    try:
        return run(argv)
    except KeyboardInterrupt:  # Ctrl-C before or after the event loop ran
        write_text(sys.stderr, INTERRUPTED)
        return EXIT_INTERRUPTED
