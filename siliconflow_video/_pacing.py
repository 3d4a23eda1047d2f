"""One request-rate governor per client, shared by every API call it makes.

SiliconFlow limits requests per account and per model, and its 429s carry no
``Retry-After``. Backing off each job on its own is not enough: hundreds of waits would keep
knocking together. So the client as a whole keeps one rate:

- No limit at first: with no rate limit in force, polls go out as soon as they are due.
- On a 429, the rate drops to a little under what the server has just been accepting (the
  successes seen in the last ``window``), at most once per window so a burst of 429s from
  requests already in flight counts once. When nothing gets through it halves instead. A
  trickle of requests (fewer than ``min_sample`` in the window) sets no rate: each request's
  own backoff handles it.
- Without 429s it creeps back up: a few percent a second just after one, doubling with each
  quiet window (up to 50 % a second); once none has been seen for ``recovery`` seconds and
  the rate is well above demand, the limit is lifted entirely.
- A ``Retry-After`` pauses every request until it has passed.

This is AIMD, as TCP does it, but with the decrease anchored to the measured acceptance rate
rather than a blind halving, so the client settles just under the server's limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import attrs


@attrs.frozen
class GovernorStats:
    """A snapshot of the governor, for logs, benchmarks and tests."""

    rate: float | None
    requests: int
    rate_limited: int


class Pacing(Protocol):
    """What spaces a client's API requests: a :class:`RateGovernor` of its own by default,
    or one shared with other processes (a worker fleet's budget in PostgreSQL). ``acquire``
    before each request; then ``on_accepted`` or ``on_rate_limited`` with its answer, the
    latter given what that request's ``acquire`` returned (its turn, or None): a 429 of a
    request whose turn came before the last cut of the rate was sent at the old rate, and
    says nothing of the new one."""

    async def acquire(self) -> float | None: ...

    def on_accepted(self) -> None: ...

    def on_rate_limited(
        self, retry_after: float | None = None, *, turn: float | None = None
    ) -> None: ...

    def stats(self) -> GovernorStats: ...


class RateGovernor:
    """Spaces the starts of API requests; see the module docstring."""

    def __init__(
        self,
        *,
        window: float = 1.0,
        headroom: float = 0.92,
        creep: float = 0.03,
        recovery: float = 10.0,
        min_rate: float = 0.2,
        min_sample: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._headroom = headroom
        self._creep = creep
        self._recovery = recovery
        self._min_rate = min_rate
        self._min_sample = min_sample
        self._clock = clock
        self._rate: float | None = None
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._accepted: deque[float] = deque()
        self._limited: deque[float] = deque()
        self._last_decrease = float("-inf")
        self._last_limited = float("-inf")
        self._last_adjust = clock()
        self._requests = 0
        self._rate_limited = 0

    @property
    def rate(self) -> float | None:
        """Requests per second now allowed, or None when there is no limit."""
        return self._rate

    def stats(self) -> GovernorStats:
        return GovernorStats(self._rate, self._requests, self._rate_limited)

    def delay(self) -> float:
        """Reserve the next start slot; the seconds to wait before using it."""
        now = self._clock()
        self._requests += 1
        start = max(now, self._paused_until)
        if self._rate is not None:
            start = max(start, self._next_slot)
            self._next_slot = start + 1.0 / self._rate
        return start - now

    async def acquire(self) -> None:
        """Wait for this request's turn."""
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)
        # No turn to tell: 429s of requests in flight count once per window here.

    @staticmethod
    def _recent(times: deque[float], horizon: float) -> int:
        while times and times[0] < horizon:
            times.popleft()
        return len(times)

    def on_accepted(self) -> None:
        """A request got an answer that was not a 429."""
        now = self._clock()
        self._accepted.append(now)
        if self._rate is None:
            self._recent(self._accepted, now - self._window)  # keep the record one window long
            return
        elapsed, self._last_adjust = now - self._last_adjust, now
        quiet = now - self._last_limited
        # Creep just after a 429, then faster and faster (doubling each quiet window), so a
        # rate cut by an early burst climbs back within seconds.
        growth = min(0.5, self._creep * 2.0 ** min(quiet / self._window, 10.0))
        self._rate += self._rate * growth * elapsed
        accepted = self._recent(self._accepted, now - self._window) / self._window
        if quiet >= self._recovery and self._rate > 2 * accepted + 1:
            self._rate = None  # far above what we use: the limit no longer binds

    def on_rate_limited(
        self, retry_after: float | None = None, *, turn: float | None = None
    ) -> None:
        """A request got a 429 (``turn``: unused, see :class:`Pacing`)."""
        now = self._clock()
        self._rate_limited += 1
        self._last_limited = now
        self._limited.append(now)
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
        # Always over a whole window, even for a client younger than that: a short span
        # would take the server's burst allowance for its rate and cause a storm of 429s.
        # Guessing low costs a few seconds instead, as the creep in on_accepted speeds up.
        window = self._window
        if now - self._last_decrease < window:
            return  # 429s of requests already in flight: this episode is counted
        horizon = now - window
        accepted = self._recent(self._accepted, horizon)
        limited = self._recent(self._limited, horizon)
        if self._rate is None and accepted + limited < self._min_sample:
            return  # a trickle of requests: each one's own backoff is enough
        self._last_decrease = now
        if accepted >= 2:
            target = accepted / window * self._headroom
        else:  # nothing gets through (a daily quota?): halve until something does
            target = (self._rate or (accepted + limited) / window) / 2
        if self._rate is not None:
            target = min(target, self._rate * self._headroom)
        self._rate = max(self._min_rate, target)
        self._last_adjust = now
        self._next_slot = max(self._next_slot, now + 1.0 / self._rate)
