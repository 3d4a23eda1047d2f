"""The client-wide rate governor, driven by a fake clock so the timings are exact."""

from __future__ import annotations

import itertools

from siliconflow_video._pacing import RateGovernor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drive(gov: RateGovernor, clock: Clock, seconds: float, limit: float | None) -> tuple[int, int]:
    """Send as fast as the governor allows against a server accepting `limit` calls/s
    (a token bucket of one second's capacity). Returns (accepted, rejected)."""
    tokens = limit or 0.0
    accepted = rejected = 0
    end = clock.now + seconds
    while clock.now < end:
        step = max(gov.delay(), 0.001)  # at most 1000 requests a second
        clock.now += step
        if limit is not None:
            tokens = min(limit, tokens + limit * step)
        if limit is None or tokens >= 1:
            tokens -= 1
            accepted += 1
            gov.on_accepted()
        else:
            rejected += 1
            gov.on_rate_limited()
    return accepted, rejected


def test_no_limit_until_a_429() -> None:
    """Without 429s the governor never delays a request."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    assert [gov.delay() for _ in range(100)] == [0.0] * 100
    assert gov.rate is None


def test_settles_just_under_the_server_limit() -> None:
    """Against a 50/s limit, the rate settles near 50 with few 429s."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    drive(gov, clock, 5, limit=50)  # the first contact: a burst, then the cut
    accepted, rejected = drive(gov, clock, 60, limit=50)
    assert accepted / 60 > 0.9 * 50
    assert rejected / (accepted + rejected) < 0.05
    assert gov.rate is not None
    assert 40 < gov.rate < 55


def test_speeds_back_up_when_the_limit_goes() -> None:
    """Once 429s stop, the rate climbs and the limit is finally lifted."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    drive(gov, clock, 10, limit=20)
    assert gov.rate is not None
    assert gov.rate < 25
    accepted, _ = drive(gov, clock, 30, limit=None)
    assert gov.rate is None
    assert accepted > 30 * 100


def test_retry_after_pauses_every_request() -> None:
    """A Retry-After holds back all requests until it has passed."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    gov.on_rate_limited(retry_after=2.0)
    assert gov.delay() == 2.0
    clock.now += 2.0
    assert gov.delay() == 0.0


def test_a_lone_429_sets_no_rate() -> None:
    """One 429 amid a trickle of requests does not throttle the whole client."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    gov.on_accepted()
    gov.on_rate_limited()
    assert gov.rate is None


def test_halves_when_nothing_gets_through() -> None:
    """When every request is refused (a daily quota), the rate keeps halving to its floor."""
    clock = Clock()
    gov = RateGovernor(clock=clock, min_rate=0.2)
    rates = []
    for _ in range(40):
        for _ in range(10):
            clock.now += max(gov.delay(), 0.01)
            gov.on_rate_limited()
        rates.append(gov.rate)
    assert rates[-1] == 0.2
    assert all(b <= a for a, b in itertools.pairwise(rates) if a and b)


def test_an_idle_client_after_a_cut_does_not_overflow() -> None:
    """Twenty idle minutes after a 429 episode, the next answer lifts the limit (the rate's
    growth over the idle time stays finite) and requests go out at once."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    drive(gov, clock, 3, limit=20)
    assert gov.rate is not None
    clock.now += 20 * 60
    gov.on_accepted()
    assert gov.rate is None
    assert [gov.delay() for _ in range(50)] == [0.0] * 50


def test_the_record_of_answers_stays_one_window_long() -> None:
    """A client that never meets a 429 keeps no ever-growing history."""
    clock = Clock()
    gov = RateGovernor(clock=clock)
    for _ in range(100_000):
        clock.now += 0.001
        gov.on_accepted()
    assert len(gov._accepted) <= 1001


def test_backoff_never_overflows() -> None:
    """After thousands of failures in a row the backoff is still a finite, capped delay."""
    from siliconflow_video._http import backoff_delay

    assert 0.0 <= backoff_delay(5000, 0.5, 20.0) <= 20.0
