"""Breaking connections on purpose, so a client sees a transport error and not a status."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

from aiohttp import web

try:  # Linux and macOS: lets us wait until the peer's kernel has the bytes we sent.
    import fcntl
    import termios

    _TIOCOUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):  # pragma: no cover - platform dependent
    _TIOCOUTQ = None

__all__ = ["close_cleanly", "flush", "reset"]

# aiohttp drops bytes its reader has received but the application has not read yet once a
# connection error arrives. Pausing this long before breaking a connection lets a client
# consume what was sent, so "after_bytes" is what it actually keeps, even under load.
BREAK_GRACE = 0.05


async def flush(request: web.BaseRequest, timeout: float = 2.0) -> None:
    """Wait until what was written has left this process and, where knowable, the kernel,
    then :data:`BREAK_GRACE` more.

    Without this, bytes "sent" before a reset could be discarded with the socket, and a
    client would receive fewer bytes than the fault promised.
    """
    transport = request.transport
    if transport is None:
        return
    deadline = time.monotonic() + timeout
    # ASYNC110: asyncio offers no event for "write buffer empty"; polling is the only way.
    while transport.get_write_buffer_size() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    sock = transport.get_extra_info("socket")
    while _TIOCOUTQ is not None and sock is not None and time.monotonic() < deadline:
        try:
            raw = fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            break
        if struct.unpack("i", raw)[0] == 0:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(BREAK_GRACE)


def reset(request: web.BaseRequest) -> None:
    """Abort the connection with a TCP RST (``SO_LINGER`` 0), dropping anything unsent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def close_cleanly(request: web.BaseRequest) -> None:
    """Close the connection with a FIN after what was written, as a well-behaved peer would."""
    transport = request.transport
    if transport is not None:
        transport.close()
