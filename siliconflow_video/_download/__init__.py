"""One video URL → one verified file on disk.

How the files next to the final ``path`` are used:

``<name>.part``
    The bytes received so far. It is locked (``fcntl.flock``) by the one process writing it,
    and renamed to ``<name>`` (under the lock) only once its length matches what the server
    announced. The final name therefore only ever holds a complete file.
``<name>.part.json``
    ``{"etag", "last_modified", "total"}`` of the response the partial bytes came from. It is
    written before the first body byte, so a ``.part`` with bytes always has one; without it
    the bytes cannot be tied to a response, and the download starts over.

A rerun (in this process or another) resumes with ``Range: bytes=N-`` and ``If-Range``, and
accepts only a ``206`` whose ``Content-Range`` continues exactly at ``N``. Anything else
starts over from byte 0: bytes of two different responses are never spliced.

Signed URLs carry a credential in their query string, so messages and logs only ever show
``scheme://host/path``.

The modules, in the order the data goes through them:

- ``_transfer``: ``download_video``: the lock, reusing a finished file, and the ``.part``
  file as a sink (``PartFile``);
- ``_fetch``: one URL into any sink (this file, or an object-store upload): the tries, URL
  refreshes, the host's idle deadline and decoding;
- ``_responses``: what an answer means, from its status and headers;
- ``_writer``: the body into ``.part`` (offset, hash, batches, loop or thread);
- ``_partfile``: ``.part``, its sidecar and lock, and what disk errors mean.
"""

from ._fetch import Fetch, HostClock, IdleDeadline, Progress, Sink, Source, Throttle
from ._partfile import Validator, disk_message
from ._transfer import PartFile, VideoFile, download_video
from ._writer import OS_DISK, Disk, DiskWrites, OSDisk, PartWrite

__all__ = [
    "OS_DISK",
    "Disk",
    "DiskWrites",
    "Fetch",
    "HostClock",
    "IdleDeadline",
    "OSDisk",
    "PartFile",
    "PartWrite",
    "Progress",
    "Sink",
    "Source",
    "Throttle",
    "Validator",
    "VideoFile",
    "disk_message",
    "download_video",
]
