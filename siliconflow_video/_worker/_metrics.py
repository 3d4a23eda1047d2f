"""The worker's Prometheus metrics, in a registry of its own (never the process-wide one).

Counters are fed from the loop: the client's ``rate_stats`` (status calls and 429s), the
progress callback's BYTES events, and the tasks' outcomes. Labels hold states, task names
and outcomes only: never an id, a URL or a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigurationError
from .._journal import JobState
from .._models import EventKind, ProgressEvent
from .._pacing import GovernorStats

__all__ = ["Metrics"]


class Metrics:
    """Counters and gauges of one worker process, and the HTTP listener serving them."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs = Gauge(
            "siliconflow_video_jobs",
            "Jobs in the journal, by state",
            ["state"],
            registry=self.registry,
        )
        self.status_calls = Counter(
            "siliconflow_video_status_calls",
            "Status calls made by this worker",
            registry=self.registry,
        )
        self.status_429 = Counter(
            "siliconflow_video_status_429",
            "Answers 429 (rate limited) this worker received",
            registry=self.registry,
        )
        self.bytes = Counter(
            "siliconflow_video_bytes_transferred",
            "Video bytes this worker received",
            registry=self.registry,
        )
        self.transfer_retries = Counter(
            "siliconflow_video_transfer_retries",
            "Transfers run again for an id (after a worker died, or an earlier try failed)",
            registry=self.registry,
        )
        self.tasks = Counter(
            "siliconflow_video_tasks",
            "Tasks run by this worker, by task and outcome",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.rate_shared = Gauge(
            "siliconflow_video_rate_budget_shared",
            "1 while this worker paces on the fleet's rate budget in PostgreSQL, 0 while on "
            "its own governor (--rate-budget local, or PostgreSQL out of reach)",
            registry=self.registry,
        )
        for state in JobState:
            self.jobs.labels(state=state.value).set(0)
        self._seen = GovernorStats(rate=None, requests=0, rate_limited=0)
        self._bytes: dict[tuple[str, int], int] = {}
        self._server: Any = None

    def serve(self, port: int, host: str) -> int:
        """Serve ``/metrics`` on ``host:port`` (0: any free port) from a thread; the port."""
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # the port taken, an address not of this machine
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from None
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def count_calls(self, stats: GovernorStats) -> None:
        """Add what the client's governor counted since the last look."""
        self.status_calls.inc(max(stats.requests - self._seen.requests, 0))
        self.status_429.inc(max(stats.rate_limited - self._seen.rate_limited, 0))
        self._seen = stats

    def count_jobs(self, counts: Mapping[JobState, int]) -> None:
        """Set the job gauge from the journal's counts (``Journal.count_jobs``)."""
        for state in JobState:
            self.jobs.labels(state=state.value).set(counts.get(state, 0))

    def progress(self, event: ProgressEvent) -> None:
        """The progress callback of the transfers: BYTES events add their new bytes.

        A video's BYTES events carry running totals, and its first says where the transfer
        starts: 0, the bytes a resumed transfer kept (a dead worker's ``.part`` file, its
        uploaded parts) or, for a complete file reused, its size. That first one is the
        baseline: only what arrives after it was received by this worker."""
        if event.kind is EventKind.BYTES and event.index is not None:
            key = (event.request_id, event.index)
            before = self._bytes.get(key)
            if before is not None and event.bytes_done > before:
                self.bytes.inc(event.bytes_done - before)
            self._bytes[key] = event.bytes_done
        elif event.kind is EventKind.DONE:
            for key in [k for k in self._bytes if k[0] == event.request_id]:
                del self._bytes[key]
