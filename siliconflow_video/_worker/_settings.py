"""How a worker runs: its concurrency, and the timings that bound how fast a dead worker's
jobs are taken over."""

from __future__ import annotations

import attrs

from .._exceptions import ConfigurationError

__all__ = ["RATE_BUDGETS", "WorkerSettings"]

#: The values of ``WorkerSettings.rate_budget``.
RATE_BUDGETS = ("shared", "local")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class WorkerSettings:
    """The timings of a worker. A worker killed with SIGKILL stops its heartbeat; its jobs
    are taken over by another worker at most ``takeover_bound`` seconds later
    (``stalled_after`` + ``check_every`` + ``fetch_every``), plus, on another machine,
    what is left of its journal leases (``lease_seconds``, counted from the same moment, so
    the two overlap)."""

    #: Jobs (status calls or transfers) one worker runs at once.
    concurrency: int = 8
    #: Seconds between two heartbeats of a worker in PostgreSQL.
    heartbeat_every: float = attrs.field(default=2.0, validator=_positive)
    #: A worker whose last heartbeat is older than this is stalled: its jobs are retried.
    stalled_after: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds between two rounds of upkeep: stalled jobs retried, journaled ids without a
    #: task given one, the job counts of the metrics, and (``burst``) whether work is left.
    check_every: float = attrs.field(default=2.0, validator=_positive)
    #: The longest a job due (a poll's ``schedule_in`` passed) waits for a free worker to see it.
    fetch_every: float = attrs.field(default=1.0, validator=_positive)
    #: The journal's per-id leases: renewed while held; a dead holder's expire after this.
    lease_seconds: float = attrs.field(default=20.0, validator=_positive)
    #: On SIGTERM, running jobs get this long to finish before they are cancelled (and
    #: retried by the next worker; a transfer resumes from the bytes kept).
    shutdown_grace: float = attrs.field(default=10.0, validator=_positive)

    #: How long a starting worker keeps trying to reach PostgreSQL (a server restarting).
    start_timeout: float = attrs.field(default=60.0, validator=_positive)

    #: A job that ends in an error a later try may get past (the API out of reach, the
    #: video host or the bucket failing, an expired URL) is polled again every
    #: ``retry_every`` seconds until it is ``retry_for`` seconds old (counted from when it was
    #: journaled); only then is it recorded failed. A job SiliconFlow failed, an id it
    #: refuses, or a file name that is not ours fail at once.
    retry_for: float = attrs.field(default=3600.0, validator=_positive)
    retry_every: float = attrs.field(default=30.0, validator=_positive)
    #: The longest one poll task waits for a status (the API out of reach, its answers
    #: unusable): then the task ends, the slot is free, and the id is asked about again
    #: later, as for an account-wide error (nothing is failed for it).
    poll_timeout: float = attrs.field(default=60.0, validator=_positive)

    #: How the fleet keeps under the account's rate limit: ``"shared"``, one rate for every
    #: worker on the account, in PostgreSQL (this worker's own governor while it is out of
    #: reach); ``"local"``, each worker's client adapts to its own 429s only.
    rate_budget: str = "shared"

    def __attrs_post_init__(self) -> None:
        if self.rate_budget not in RATE_BUDGETS:
            raise ConfigurationError(
                f"rate_budget must be one of {', '.join(RATE_BUDGETS)}, got {self.rate_budget!r}"
            )
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.stalled_after <= 2 * self.heartbeat_every:
            raise ConfigurationError(
                "stalled_after must be more than two heartbeats, or a busy worker looks dead"
            )

    @property
    def takeover_bound(self) -> float:
        """The longest, in seconds, before a dead worker's jobs run elsewhere (leases on
        another machine aside)."""
        return self.stalled_after + self.check_every + self.fetch_every
