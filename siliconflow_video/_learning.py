"""What polling learns: how long jobs run, and where in time a job's finish is likely.

Two pieces, both plain and synchronous so that a simulation can drive them without a server:

- ``RunTimes``, the learned state: the most recent run times (seconds from the start of a
  job's run to its finish), per key (the model and size a client submitted) and pooled. A
  small plain value with ``to_dict``/``from_dict``, so that a journal can keep it.
- ``next_gap``, the schedule: given what one job has shown so far (when it was last seen
  queued, first seen running) and the learned run times, how long to wait before the next
  poll.

The schedule models the finish time as F = S + D: S, the start of the run, lies between the
last answer that said InQueue and the first that said InProgress; D is drawn from the
learned run times (each sample widened by a small kernel). After each answer that says "not
done" at time t, it picks the gap s that balances calls against delay: the smallest s with
``s * P(t < F <= t + s | F > t) >= 2 * call_cost``. A call is worth ``call_cost`` seconds of
delay; where a finish is unlikely this gives long gaps (up to ``max_interval``), across the
window where it is likely, short ones. (For a hazard h, polling every s costs 1/s calls and
h*s/2 delay per second; the best s is sqrt(2 * call_cost / h), which is the rule above.)
Run times are quantiles of a window of recent samples, so one odd job moves nothing much;
once a job has outlived nearly all of them it is treated as unknown again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._config import PollPolicy

__all__ = ["JobTrace", "RunTimes", "run_time_sample"]

#: The pooled key: every sample is also learned under it.
POOLED = ""


@attrs.frozen
class Spread:
    """A summary of learned run times: a few quantiles and the kernel width around each."""

    points: tuple[float, ...]
    kernel: float
    samples: int


class RunTimes:
    """Recent run times in seconds, per key and pooled (see the module docstring).

    Only finished, successful jobs are learned from; a job that failed or whose wait ended
    early says nothing about how long a run takes, and is never added.
    """

    #: Samples kept per key: the most recent, so that the estimate follows drift.
    KEEP = 64
    #: Samples a key needs before its own estimate is used (else the pooled one is).
    MIN_SAMPLES = 3

    def __init__(self, samples: Mapping[str, Iterable[float]] | None = None) -> None:
        self._samples: dict[str, deque[float]] = {}
        self._spreads: dict[str, Spread | None] = {}
        for key, values in (samples or {}).items():
            for value in values:
                self._add(key, value)

    def __repr__(self) -> str:
        counts = {k or "(pooled)": len(v) for k, v in self._samples.items()}
        return f"<RunTimes {counts}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunTimes) and self.to_dict() == other.to_dict()

    def _add(self, key: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            return
        ring = self._samples.get(key)
        if ring is None:
            ring = self._samples[key] = deque(maxlen=self.KEEP)
        ring.append(float(seconds))
        self._spreads.pop(key, None)

    def add(self, key: str | None, seconds: float) -> None:
        """Learn one run time, under ``key`` (when known) and pooled."""
        if key:
            self._add(key, seconds)
        self._add(POOLED, seconds)

    def samples(self, key: str | None = None) -> list[float]:
        """The samples kept under ``key`` (None: pooled), oldest first."""
        return list(self._samples.get(key or POOLED, ()))

    def spread(self, key: str | None) -> Spread | None:
        """The estimate for ``key``: its own when it has enough samples, else the pooled
        one; None while neither has."""
        for k in (key, POOLED) if key else (POOLED,):
            if k not in self._spreads:
                self._spreads[k] = _summarise(self._samples.get(k, ()), self.MIN_SAMPLES)
            found = self._spreads[k]
            if found is not None:
                return found
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy: ``{"version": 1, "samples": {key: [seconds, ...]}}``."""
        return {"version": 1, "samples": {k: list(v) for k, v in self._samples.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunTimes:
        """The inverse of ``to_dict``; values that are not positive numbers are skipped."""
        if data.get("version") != 1:
            raise ValueError(f"unknown RunTimes version {data.get('version')!r}")
        samples = data.get("samples") or {}
        times = cls()
        for key, values in samples.items():
            for value in values:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    times._add(str(key), float(value))
        return times


#: The quantiles a spread keeps: enough to follow two modes, few enough to be cheap. The
#: outer 5 % on each side are left out: a rare odd run (a stall, a retry at SiliconFlow)
#: must not stretch the window every later job is polled over.
_QUANTILES = tuple(0.05 + 0.9 * (i + 0.5) / 16 for i in range(16))


def _summarise(samples: Iterable[float], minimum: int) -> Spread | None:
    ordered = sorted(samples)
    n = len(ordered)
    if n < minimum:
        return None
    points = tuple(ordered[min(n - 1, int(q * n))] for q in _QUANTILES)
    median = ordered[n // 2]
    iqr = ordered[(3 * n) // 4] - ordered[n // 4]
    # Wide enough to cover the gaps between the kept points, and some doubt while the
    # samples are few; at least a few percent of the run time.
    kernel = max(0.03 * median, 0.5 * iqr / 4, 0.25 * median / n, 0.05)
    return Spread(points, kernel, n)


@attrs.define
class JobTrace:
    """What one job's answers have shown, in the poller's clock."""

    #: When the job was last seen InQueue (None: never).
    queued_at: float | None = None
    #: When it was first seen InProgress (None: not yet).
    running_at: float | None = None
    #: When it was last seen InProgress.
    last_running_at: float | None = None

    def saw(self, status: str, now: float) -> None:
        if status == "InQueue":
            self.queued_at = now
        elif status == "InProgress":
            if self.running_at is None:
                self.running_at = now
            self.last_running_at = now


def run_time_sample(trace: JobTrace, finished_at: float, inference: float | None) -> float | None:
    """The run time to learn from a job seen ``Succeed`` at ``finished_at``, or None.

    The answers bound it: the run started after the last InQueue and by the first
    InProgress, and ended after the last InProgress and by now. ``results.timings.inference``
    is precise when the API gives it, and is used within those bounds; without it, the
    middle of the bounds, when they are tight enough to mean something.
    """
    low = 0.0
    if trace.running_at is not None and trace.last_running_at is not None:
        low = trace.last_running_at - trace.running_at
    high = math.inf
    if trace.queued_at is not None:
        high = finished_at - trace.queued_at
    if inference is not None and math.isfinite(inference) and inference > 0:
        return min(max(inference, low), high)
    if math.isfinite(high) and high - low <= 0.25 * (high + low) / 2:
        return (high + low) / 2
    return None


def finish_cdf(spread: Spread, start_after: float, start_by: float, t: float) -> float:
    """P(F <= t) for F = S + D, S uniform on [start_after, start_by], D the spread."""
    lo = start_after - spread.kernel
    width = start_by - start_after + 2 * spread.kernel
    total = 0.0
    for d in spread.points:
        x = (t - d - lo) / width
        if x >= 1.0:
            total += 1.0
        elif x > 0.0:
            total += x
    return total / len(spread.points)


#: Past this share of the learned runs, a job is treated as unknown again (blind polling).
OVERDUE = 0.97


def next_gap(
    spread: Spread,
    trace: JobTrace,
    now: float,
    *,
    call_cost: float,
    min_gap: float,
    max_gap: float,
) -> float | None:
    """Seconds until the next poll of a job still running at ``now``, from the learned
    ``spread``; None when it tells nothing (the job has outlived nearly every learned run,
    or has not started): then the caller polls blind."""
    if trace.running_at is None:
        return None
    start_by = trace.running_at
    if trace.queued_at is not None:
        start_after = trace.queued_at
    else:  # first seen running: it may have started as long ago as the longest run
        start_after = start_by - spread.points[-1] - spread.kernel
    done = finish_cdf(spread, start_after, start_by, now)
    if done >= OVERDUE:
        return None
    alive = 1.0 - done

    def worth(gap: float) -> float:
        # The delay a poll at now + gap saves, per the rule in the module docstring.
        return gap * (finish_cdf(spread, start_after, start_by, now + gap) - done) / alive

    target = 2.0 * call_cost
    if worth(max_gap) < target:
        return max_gap
    if worth(min_gap) >= target:
        return min_gap
    low, high = min_gap, max_gap
    for _ in range(8):  # worth() grows with the gap: bisect to 1/256 of the range
        mid = (low + high) / 2
        if worth(mid) >= target:
            high = mid
        else:
            low = mid
    return high


def learned_gap(
    policy: PollPolicy, spread: Spread | None, trace: JobTrace, status: str, now: float
) -> float | None:
    """The gap before the next poll of a job that answered ``status`` at ``now``, from what
    was learned (before jitter); None: poll blind (the growing schedule)."""
    if not policy.learn or spread is None:
        return None
    if status == "InQueue":
        # A finish is impossible before the run starts; each poll here narrows when it
        # started, hence the window its finish falls in.
        return policy.blind_cap
    return next_gap(
        spread,
        trace,
        now,
        call_cost=policy.call_cost,
        min_gap=policy.interval,
        max_gap=policy.max_interval,
    )
