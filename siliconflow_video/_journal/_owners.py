"""Who holds a lease, and whether that process is still alive.

A lease is live until its expiry. A holder on this same machine whose process is gone (it
was killed, even with ``kill -9``) frees its leases at once: a restart need not wait for
the expiry. "The same machine" is the host name, the boot id and the PID namespace
together; where any of them cannot be read (or on Windows, where ``os.kill`` would end the
process), only the expiry counts. A reused PID only ever makes a dead holder look alive,
which costs waiting for the expiry, never two processes on one job.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from functools import cache

__all__ = ["holder_is_live", "machine_id", "new_owner"]


@cache
def machine_id() -> str | None:
    """An identity shared by the processes whose PIDs this process can check, or None."""
    if sys.platform == "win32":
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{socket.gethostname()}|{boot}|{pid_ns}"


def new_owner() -> str:
    """A fresh owner id, ``host:pid:token``: readable in ``jobs`` output, unique per open."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def holder_is_live(
    *,
    until: float | None,
    machine: str | None,
    pid: int | None,
    now: float,
) -> bool:
    """True while a lease (held until ``until``, by a process ``pid`` on ``machine``) still
    keeps others off."""
    if until is None or until < now:
        return False
    here = machine_id()
    if here is not None and machine == here and pid is not None and pid != os.getpid():
        return _process_exists(pid)
    return True
