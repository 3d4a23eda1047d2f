"""The Poller's schedule on a virtual clock: every poll time is asserted exactly."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable

import attrs
import pytest

from siliconflow_video import PollPolicy, RetryPolicy
from siliconflow_video._exceptions import RateLimitError
from siliconflow_video._models import Status, VideoStatus, parse_status
from siliconflow_video._poller import Poller

#: Backoff far below any poll interval, so failures delay by exactly the interval.
TINY_RETRY = RetryPolicy(max_attempts=4, base_delay=1e-6, max_delay=1e-6)


class _Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """A clock whose time moves only when every task is idle: then to the next timer."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._reads = 0  # how often the time was read: a sign that tasks still run

    def time(self) -> float:
        self._reads += 1
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object], /) -> _Timer:
        timer = _Timer(self.now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        done = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: done.done() or done.set_result(None))
        await done

    async def run_until(self, done: Callable[[], bool], *, limit: float = 10_000.0) -> None:
        """Advance, timer by timer, until ``done()`` holds (or virtual ``limit`` s pass)."""
        while True:
            # Let every ready task run to its next await: until the time goes unread (and
            # no timer is set) for ten rounds of the loop in a row.
            quiet = 0
            while quiet < 10:
                before = (self._reads, len(self._timers))
                await asyncio.sleep(0)
                quiet = quiet + 1 if (self._reads, len(self._timers)) == before else 0
            if done():
                return
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > limit:
                raise AssertionError(f"stuck at t={self.now}: nothing left to run")
            when, _, timer = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            timer.callback()


def body(status: str, **extra: object) -> bytes:
    import json

    payload: dict[str, object] = {"status": status, **extra}
    if status == "Succeed":
        payload.setdefault("results", {"videos": [{"url": "https://v.example/a.mp4"}]})
    return json.dumps(payload).encode()


@attrs.define
class Script:
    """Scripted jobs: each id is InQueue until ``queue``, InProgress until ``finish``."""

    clock: VirtualClock
    queue: dict[str, float] = attrs.Factory(dict)
    finish: dict[str, float] = attrs.Factory(dict)
    outcome: dict[str, str] = attrs.Factory(dict)
    inference: dict[str, float] = attrs.Factory(dict)
    calls: list[tuple[str, float]] = attrs.Factory(list)
    #: Raised instead of answering, for the next calls (any id).
    errors: list[BaseException] = attrs.Factory(list)

    def add(
        self,
        rid: str,
        *,
        queue: float = 0.0,
        run: float,
        outcome: str = "Succeed",
        inference: float | None = None,
    ) -> str:
        start = self.clock.now + queue
        self.queue[rid] = start
        self.finish[rid] = start + run
        self.outcome[rid] = outcome
        self.inference[rid] = run if inference is None else inference
        return rid

    async def fetch(self, rid: str) -> VideoStatus:
        now = self.clock.now
        self.calls.append((rid, now))
        if self.errors:
            raise self.errors.pop(0)
        if now < self.queue[rid]:
            return parse_status(body("InQueue"), rid)
        if now < self.finish[rid]:
            return parse_status(body("InProgress"), rid)
        if self.outcome[rid] == "Failed":
            return parse_status(body("Failed", reason="nsfw"), rid)
        timings = {"inference": self.inference[rid]}
        results = {"videos": [{"url": "https://v.example/a.mp4"}], "timings": timings}
        return parse_status(body("Succeed", results=results), rid)

    def times(self, rid: str) -> list[float]:
        return [t for r, t in self.calls if r == rid]


def make_poller(
    script: Script,
    policy: PollPolicy,
    *,
    retry: RetryPolicy = TINY_RETRY,
    max_in_flight: int = 16,
) -> Poller:
    return Poller(
        script.fetch,
        policy=policy,
        retry=retry,
        max_in_flight=max_in_flight,
        clock=script.clock,
        rng=random.Random(7),
    )


#: The schedule of earlier releases: 1 s growing by 1.5x, no jitter, no learning.
GROWING = PollPolicy.growing(jitter=0.0)


async def wait_all(
    clock: VirtualClock, poller: Poller, rids: list[str]
) -> dict[str, tuple[float, VideoStatus | BaseException]]:
    """Watch every id; when each future settled (virtual time) and with what."""
    seen: dict[str, tuple[float, VideoStatus | BaseException]] = {}
    for rid in rids:

        def done(f: asyncio.Future[VideoStatus], rid: str = rid) -> None:
            seen[rid] = (clock.now, f.exception() or f.result())

        poller.watch(rid).add_done_callback(done)
    await clock.run_until(lambda: len(seen) == len(rids))
    return seen


async def test_polls_grow_from_the_interval_up_to_the_cap() -> None:
    """Without jitter the polls fall exactly at 0, 1, 2.5, 4.75, ... then every 10 s."""
    clock = VirtualClock()
    script = Script(clock)
    script.add("a", queue=10.0, run=40.0)
    poller = make_poller(script, GROWING)
    seen = await wait_all(clock, poller, ["a"])
    times = script.times("a")
    gaps = [round(b - a, 9) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375]
    assert gaps[6:] == [10.0] * len(gaps[6:])
    assert seen["a"][0] == times[-1] >= 50.0
    await poller.aclose()


async def test_jitter_spreads_each_gap_within_its_bounds() -> None:
    """With jitter 0.2 every gap lies within +/-20 % of the unjittered one, and never above
    the cap."""
    clock = VirtualClock()
    script = Script(clock)
    script.add("a", run=120.0)
    poller = make_poller(script, attrs.evolve(GROWING, jitter=0.2))
    await wait_all(clock, poller, ["a"])
    gaps = [b - a for a, b in itertools.pairwise(script.times("a"))]
    nominal = [min(10.0, 1.5**i) for i in range(len(gaps))]
    for gap, n in zip(gaps, nominal, strict=True):
        assert 0.8 * n - 1e-9 <= gap <= min(10.0, 1.2 * n) + 1e-9
    assert len(set(gaps)) > 5  # it did jitter
    await poller.aclose()


async def test_a_finish_is_seen_within_the_cap_by_400_waits() -> None:
    """400 jobs finishing over 0.5-3 s with a 1 s cap: each is seen within 1 s of its finish."""
    clock = VirtualClock()
    script = Script(clock)
    rng = random.Random(5)
    rids = [script.add(f"j{i}", run=rng.uniform(0.5, 3.0)) for i in range(400)]
    policy = PollPolicy(interval=0.5, max_interval=1.0, jitter=0.2)
    poller = make_poller(script, policy)
    seen = await wait_all(clock, poller, rids)
    lags = [seen[rid][0] - script.finish[rid] for rid in rids]
    assert min(lags) >= 0
    assert max(lags) <= 1.0
    await poller.aclose()


async def test_a_transient_error_only_delays_the_next_poll() -> None:
    """A 429 on the second poll is retried one interval later (the interval it would have
    waited anyway, not grown); the job still finishes."""
    clock = VirtualClock()
    script = Script(clock)
    script.add("a", run=3.0)
    poller = make_poller(script, GROWING)
    future = poller.watch("a")
    await clock.run_until(lambda: len(script.calls) == 1)
    script.errors.append(RateLimitError("slow down", status_code=429))
    await clock.run_until(future.done)
    assert future.result().status is Status.SUCCEED
    # 0: InProgress; 1: 429; 2.5: InProgress (1.5 s again); 4: done
    assert script.times("a") == [0.0, 1.0, 2.5, 4.0]
    await poller.aclose()


@pytest.mark.parametrize("in_flight", [1, 4])
async def test_no_more_than_max_in_flight_polls_at_once(in_flight: int) -> None:
    """Polls that take time queue behind the request slots; the slots are the limit."""
    clock = VirtualClock()
    script = Script(clock)
    running = 0
    peak = 0
    inner = script.fetch

    async def slow_fetch(rid: str) -> VideoStatus:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await clock.sleep(0.1)
            return await inner(rid)
        finally:
            running -= 1

    rids = [script.add(f"j{i}", run=2.0) for i in range(20)]
    poller = Poller(
        slow_fetch, policy=GROWING, retry=TINY_RETRY, max_in_flight=in_flight, clock=clock
    )
    seen = await wait_all(clock, poller, rids)
    assert all(isinstance(s, VideoStatus) for _, s in seen.values())
    assert peak == in_flight
    await poller.aclose()


async def test_unusable_answers_end_the_wait_after_the_grace_exactly() -> None:
    """Unusable answers every 10 s with a grace of 30 s: the fourth one, at 30 s, ends the
    wait with a MalformedResponseError naming the status."""
    from siliconflow_video._exceptions import MalformedResponseError

    clock = VirtualClock()
    script = Script(clock)
    script.add("a", run=1000.0)
    bad = b'{"status": "Cancelled"}'
    script.errors += [_malformed(bad, "a") for _ in range(10)]
    policy = PollPolicy(interval=10.0, max_interval=10.0, jitter=0.0, malformed_grace=30.0)
    poller = make_poller(script, policy)
    seen = await wait_all(clock, poller, ["a"])
    when, error = seen["a"]
    assert when == 30.0
    assert script.times("a") == [0.0, 10.0, 20.0, 30.0]
    assert isinstance(error, MalformedResponseError)
    assert "gave up after 4 unusable status answers" in str(error)
    assert "unknown status 'Cancelled'" in str(error)
    await poller.aclose()


def _malformed(raw: bytes, rid: str) -> BaseException:
    from siliconflow_video._exceptions import MalformedResponseError

    try:
        parse_status(raw, rid)
    except MalformedResponseError as exc:
        return exc
    raise AssertionError("the body parsed")


def test_malformed_grace_is_validated() -> None:
    """A negative grace is a ConfigurationError; 0 (give up at the first) is allowed."""
    from siliconflow_video import ConfigurationError

    with pytest.raises(ConfigurationError, match="malformed_grace"):
        PollPolicy(malformed_grace=-1.0)
    assert PollPolicy(malformed_grace=0.0).malformed_grace == 0.0


# -- learning ------------------------------------------------------------------------------

LEARNING = PollPolicy(jitter=0.0)


async def teach(clock: VirtualClock, script: Script, poller: Poller, runs: list[float]) -> None:
    """Run one job per run time (queued 5 s first) to its finish, so the poller learns."""
    rids = [script.add(f"teach{len(script.queue)}", queue=5.0, run=run) for run in runs]
    await wait_all(clock, poller, rids)


async def test_the_first_poll_is_not_delayed_by_learning() -> None:
    """However much was learned, a job's first poll goes out the moment it is watched."""
    clock = VirtualClock()
    script = Script(clock)
    poller = make_poller(script, LEARNING)
    await teach(clock, script, poller, [60.0] * 8)
    assert poller.learned.spread(None) is not None
    clock.now += 0.5
    script.add("new", queue=5.0, run=60.0)
    poller.watch("new")
    await clock.run_until(lambda: bool(script.times("new")))
    assert script.times("new") == [clock.now]
    await poller.aclose()


async def test_learned_polling_is_sparse_then_dense_and_sees_the_finish_soon() -> None:
    """Once 60 s runs are learned, a job queued 5 s costs a handful of polls, and its
    finish is seen within a few seconds."""
    clock = VirtualClock()
    script = Script(clock)
    poller = make_poller(script, LEARNING)
    await teach(clock, script, poller, [59.0, 60.0, 61.0, 60.5, 59.5, 60.0])
    script.add("job", queue=5.0, run=60.0)
    seen = await wait_all(clock, poller, ["job"])
    times = [t - script.queue["job"] + 5.0 for t in script.times("job")]
    lag = seen["job"][0] - script.finish["job"]
    assert 0 <= lag <= 3.0
    assert len(times) <= 9, times  # sleep(5) would make 14
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 20.0  # sparse while the job cannot be near its finish
    await poller.aclose()


async def test_a_job_much_slower_than_learned_is_seen_within_the_cap() -> None:
    """A job ten times slower than every learned run is still seen within max_interval of
    its finish (within the blind cap, in fact: it is polled blind once overdue)."""
    clock = VirtualClock()
    script = Script(clock)
    policy = attrs.evolve(LEARNING, max_interval=30.0)
    poller = make_poller(script, policy)
    await teach(clock, script, poller, [10.0] * 6)
    script.add("slow", queue=2.0, run=100.0)
    seen = await wait_all(clock, poller, ["slow"])
    gaps = [b - a for a, b in itertools.pairwise(script.times("slow"))]
    assert max(gaps) <= policy.max_interval
    assert 0 <= seen["slow"][0] - script.finish["slow"] <= policy.blind_cap
    await poller.aclose()


async def test_failed_and_timed_out_jobs_do_not_skew_the_estimate() -> None:
    """Jobs that failed fast, and waits given up before the finish, teach nothing: the
    learned run times are those of the successes alone."""
    clock = VirtualClock()
    script = Script(clock)
    poller = make_poller(script, LEARNING)
    await teach(clock, script, poller, [30.0] * 5)
    before = poller.learned.to_dict()
    failed = [script.add(f"f{i}", queue=1.0, run=2.0, outcome="Failed") for i in range(5)]
    await wait_all(clock, poller, failed)
    for i in range(5):  # waits cancelled (timed out) while the job still runs
        script.add(f"t{i}", queue=1.0, run=500.0)
        future = poller.watch(f"t{i}")
        start = clock.now
        await clock.run_until(lambda start=start: clock.now >= start + 20)
        future.cancel()
    assert poller.learned.to_dict() == before
    await poller.aclose()


async def test_run_times_are_learned_per_key_and_pooled() -> None:
    """A job whose key (model and size) is known is learned under it and pooled; a key with
    too few samples borrows the pooled estimate."""
    clock = VirtualClock()
    script = Script(clock)
    poller = make_poller(script, LEARNING)
    for i in range(4):
        poller.expect(f"teach{i}", "model-A 1280x720")
    await teach(clock, script, poller, [20.0] * 4)
    assert poller.learned.samples("model-A 1280x720") == [20.0] * 4
    assert poller.learned.samples() == [20.0] * 4
    assert poller.learned.spread("model-B 1280x720") == poller.learned.spread(None)
    await poller.aclose()


def test_run_times_round_trip_through_a_dict() -> None:
    """The learned state is a small plain value: to_dict / from_dict give it back."""
    import json

    from siliconflow_video._learning import RunTimes

    times = RunTimes()
    for seconds in (40.0, 41.5, 39.0):
        times.add("model-A 1280x720", seconds)
    times.add(None, 90.0)
    data = json.loads(json.dumps(times.to_dict()))
    assert RunTimes.from_dict(data) == times
    assert RunTimes.from_dict(data).samples() == [40.0, 41.5, 39.0, 90.0]
    with pytest.raises(ValueError, match="version"):
        RunTimes.from_dict({"version": 99})


def test_an_outlier_does_not_move_the_schedule() -> None:
    """One run ten times longer among thirty moves no poll of a job by more than 0.5 s, nor
    when it counts as outliving what was learned."""
    from siliconflow_video._learning import JobTrace, RunTimes, learned_gap

    def schedule(runs: list[float]) -> list[float]:
        times = RunTimes()
        for run in runs:
            times.add(None, run)
        trace, now, polls = JobTrace(), 0.0, []
        trace.saw("InQueue", -5.0)
        while now < 70.0:
            trace.saw("InProgress", now)
            gap = learned_gap(LEARNING, times.spread(None), trace, "InProgress", now)
            if gap is None:  # outlived what was learned
                break
            now += gap
            polls.append(round(now, 1))
        return polls

    runs = [60.0 + (i % 5 - 2) * 0.5 for i in range(30)]
    usual, odd = schedule(runs), schedule([*runs[1:], 600.0])
    assert len(odd) == len(usual)
    assert all(abs(a - b) <= 0.5 for a, b in zip(odd, usual, strict=True)), (odd, usual)
