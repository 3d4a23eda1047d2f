"""`FakeState`: everything the fake knows (jobs, faults, rate limit, URL signing, request log).

The request handlers (``_api.py``, ``_video.py``) and the scripting methods of
``FakeSiliconFlow`` (``_server.py``) both work on one `FakeState`. Every piece of shared
state is guarded by one lock, held only for short, await-free sections, so scripting
methods may be called from another thread while the servers run on their own loop.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from ._content import VideoContent
from ._faults import ErrorResponse, Fault, FaultRule, Target, rate_limited
from ._jobs import Job, JobOutcome, JobSpec, LoggedRequest
from ._urls import UrlSigner, Verdict, video_path

__all__ = ["FakeState", "NOT_RUNNING"]

NOT_RUNNING = "FakeSiliconFlow is not running; call start() first"

_TARGETS: frozenset[str] = frozenset({"submit", "status", "video"})
_OUTCOMES: frozenset[str] = frozenset({"Succeed", "Failed"})


class _TokenBucket:
    """A token bucket refilled continuously at ``rate`` tokens per second up to ``capacity``."""

    def __init__(self, rate: float, capacity: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(capacity)
        self.updated = time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _default_spec() -> JobSpec:
    return {"queue_seconds": 0.05, "run_seconds": 0.1, "videos": (64 * 1024,)}


def _check_outcome(outcome: str) -> None:
    if outcome not in _OUTCOMES:
        raise ValueError(f"outcome must be 'Succeed' or 'Failed', got {outcome!r}")


@attrs.define(eq=False)
class FakeState:
    """The settings and scripted state of one fake; see ``FakeSiliconFlow`` for each."""

    api_key: str | None = "sk-test"
    seed: int = 0
    log_requests: bool = True
    url_ttl: float = 3600.0
    fresh_urls: bool = True
    latency: float = 0.0
    submit_defaults: JobSpec = attrs.field(factory=_default_spec)
    video_base_url: str | None = None
    """The storage host's origin while it runs, else ``None``."""

    _lock: threading.RLock = attrs.field(init=False, factory=threading.RLock)
    _rng: random.Random = attrs.field(init=False)
    _id_rng: random.Random = attrs.field(init=False)
    _jobs: dict[str, Job] = attrs.field(init=False, factory=dict)
    _polls: dict[str, int] = attrs.field(init=False, factory=dict)
    _first_urls: dict[tuple[str, int], str] = attrs.field(init=False, factory=dict)
    _signer: UrlSigner = attrs.field(init=False, factory=UrlSigner)
    _rules: list[FaultRule] = attrs.field(init=False, factory=list)
    _bucket: _TokenBucket | None = attrs.field(init=False, default=None)
    _bucket_retry_after: str | float | None = attrs.field(init=False, default=None)
    _log: list[LoggedRequest] = attrs.field(init=False, factory=list)
    _in_flight: int = attrs.field(init=False, default=0)
    _max_in_flight: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._id_rng = random.Random(f"ids/{self.seed}")

    # ------------------------------------------------------------------ jobs

    def add_job(
        self,
        request_id: str | None = None,
        *,
        queue_seconds: float = 0.0,
        run_seconds: float = 0.0,
        outcome: JobOutcome = "Succeed",
        reason: str = "",
        videos: Sequence[bytes | int] = (1024,),
        seed: int = 42,
        inference: float = 1.5,
    ) -> str:
        """Script a job and return its request id; see ``FakeSiliconFlow.add_job``."""
        if request_id in ("", ".", ".."):
            raise ValueError(f"request id {request_id!r} cannot be a URL path segment")
        if queue_seconds < 0 or run_seconds < 0:
            raise ValueError("queue_seconds and run_seconds must be >= 0")
        _check_outcome(outcome)
        for video in videos:
            if isinstance(video, bool) or not isinstance(video, (bytes, int)):
                raise TypeError(f"each video must be bytes or an int size, got {video!r}")
        now, wall = time.monotonic(), time.time()
        with self._lock:
            if request_id is None:
                request_id = uuid.UUID(int=self._id_rng.getrandbits(128), version=4).hex
            if request_id in self._jobs:
                raise ValueError(f"a job with request id {request_id!r} already exists")
            contents = tuple(
                VideoContent.literal(video, modified=wall)
                if isinstance(video, bytes)
                else VideoContent.generated(f"{request_id}/{index}", video, modified=wall)
                for index, video in enumerate(videos)
            )
            self._jobs[request_id] = Job(
                request_id=request_id,
                queue_seconds=queue_seconds,
                run_seconds=run_seconds,
                outcome=outcome,
                reason=reason,
                videos=contents,
                seed=seed,
                inference=inference,
                created_at=now,
            )
        return request_id

    def submit_job(self, body: dict[str, Any]) -> str:
        """Create a job from a valid ``/video/submit`` body, as ``submit_defaults`` say."""
        spec = self.submit_defaults.copy()
        if isinstance(body.get("seed"), int):
            spec["seed"] = body["seed"]
        request_id = self.add_job(**spec)
        with self._lock:
            job = self._jobs[request_id]
            self._jobs[request_id] = attrs.evolve(job, submitted=body)
        return request_id

    def finish(self, request_id: str, outcome: JobOutcome = "Succeed", reason: str = "") -> None:
        """Force a job to its end now, with ``outcome`` and ``reason``."""
        _check_outcome(outcome)
        with self._lock:
            job = self._jobs[request_id]
            self._jobs[request_id] = attrs.evolve(
                job, finished_at=time.monotonic(), outcome=outcome, reason=reason
            )

    @property
    def jobs(self) -> dict[str, Job]:
        """A snapshot of every job, by request id."""
        with self._lock:
            return dict(self._jobs)

    def content(self, request_id: str, index: int) -> VideoContent:
        """One video of one job; ``KeyError`` / ``IndexError`` when there is none."""
        with self._lock:
            job = self._jobs[request_id]
        try:
            return job.videos[index]
        except IndexError:
            raise IndexError(f"job {request_id!r} has {len(job.videos)} video(s)") from None

    def find_video(self, request_id: str, index: int) -> VideoContent | None:
        """One video of one job, or ``None`` when there is none."""
        with self._lock:
            job = self._jobs.get(request_id)
        if job is None or not 0 <= index < len(job.videos):
            return None
        return job.videos[index]

    # ------------------------------------------------------------------ URLs

    def video_url(self, request_id: str, index: int) -> str:
        """Issue a URL for one video, exactly as a status call would."""
        self.content(request_id, index)
        with self._lock:
            return self._issue_url(request_id, index)

    def expire_urls(self) -> None:
        """Revoke every video URL issued so far."""
        with self._lock:
            self._signer.revoke_all()

    def check_url(
        self, request_id: str, index: int, expires: str | None, signature: str | None
    ) -> Verdict:
        """Whether a video URL with these query values may be served now."""
        path = video_path(request_id, index)
        with self._lock:
            return self._signer.check(path, expires, signature, time.time())

    def _issue_url(self, request_id: str, index: int) -> str:
        """Must be called with the lock held."""
        key = (request_id, index)
        if not self.fresh_urls and key in self._first_urls:
            return self._first_urls[key]
        if self.video_base_url is None:
            raise RuntimeError(NOT_RUNNING)
        path = video_path(request_id, index)
        expires = int(time.time() + self.url_ttl)
        url = f"{self.video_base_url}{path}?{self._signer.query(path, expires)}"
        self._first_urls.setdefault(key, url)
        return url

    # ------------------------------------------------------------------ status bodies

    def status_body(self, request_id: str) -> dict[str, Any] | None:
        """The JSON of ``/video/status`` for one job, or ``None`` for an unknown id."""
        now = time.monotonic()
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return None
            status = job.status(now)
            if status == "Succeed":
                videos = [{"url": self._issue_url(request_id, i)} for i in range(len(job.videos))]
                results = {
                    "videos": videos,
                    "timings": {"inference": job.inference},
                    "seed": job.seed,
                }
                return {"status": status, "reason": "", "results": results}
            if status == "Failed":
                return {"status": status, "reason": job.reason, "results": None}
            polls = self._polls.get(request_id, 0)
            self._polls[request_id] = polls + 1
        # The real API answers a running job with `results` absent, null or without videos.
        body: dict[str, Any] = {"status": status, "reason": ""}
        shape = polls % 3
        if shape == 1:
            body["results"] = None
        elif shape == 2:
            body["results"] = {"videos": []}
        if status == "InQueue":
            body["position"] = 1 + polls % 3
        return body

    # ------------------------------------------------------------------ faults

    def add_fault(
        self,
        target: Target,
        fault: Fault,
        *,
        times: int | None = 1,
        probability: float = 1.0,
        request_id: str | None = None,
    ) -> FaultRule:
        """Add a fault rule; see ``FakeSiliconFlow.add_fault``."""
        if target not in _TARGETS:
            raise ValueError(f"target must be 'submit', 'status' or 'video', got {target!r}")
        if target not in fault.targets:
            raise ValueError(f"{type(fault).__name__} cannot be used on {target!r} requests")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability}")
        rule = FaultRule(target, fault, times, probability, request_id)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: FaultRule) -> None:
        """Remove one rule (no error if it is gone already)."""
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self._rules.clear()

    @property
    def faults(self) -> list[FaultRule]:
        """The rules still active, in order."""
        with self._lock:
            return list(self._rules)

    def pick_fault(self, target: Target, request_id: str | None) -> Fault | None:
        """The fault that answers one request, counting it against its rule; or ``None``."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.target != target:
                    continue
                if rule.request_id is not None and rule.request_id != request_id:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                if rule.times is not None and rule.fired >= rule.times:
                    self._rules.remove(rule)
                return rule.fault
        return None

    # ------------------------------------------------------------------ rate limit

    def set_rate_limit(
        self,
        per_second: float | None,
        *,
        burst: int | None = None,
        retry_after: str | float | None = None,
    ) -> None:
        """Set or remove the API rate limit; see ``FakeSiliconFlow.set_rate_limit``."""
        if per_second is None:
            with self._lock:
                self._bucket = None
            return
        if per_second <= 0:
            raise ValueError(f"per_second must be > 0, got {per_second}")
        capacity = math.ceil(per_second) if burst is None else burst
        if capacity < 1:
            raise ValueError(f"burst must be >= 1, got {capacity}")
        with self._lock:
            self._bucket = _TokenBucket(per_second, capacity)
            self._bucket_retry_after = retry_after

    def take_rate_limit_token(self) -> ErrorResponse | None:
        """The 429 to send when the bucket is empty, else ``None`` (a token is taken)."""
        if self._bucket is None:
            return None
        with self._lock:
            if self._bucket is None or self._bucket.take(time.monotonic()):
                return None
            return rate_limited(self._bucket_retry_after)

    # ------------------------------------------------------------------ request log

    def record(self, entry: LoggedRequest) -> None:
        """Append one answered request to the log."""
        with self._lock:
            self._log.append(entry)

    @property
    def requests(self) -> list[LoggedRequest]:
        """A snapshot of the request log."""
        with self._lock:
            return list(self._log)

    def requests_for(self, target: Target, request_id: str | None = None) -> list[LoggedRequest]:
        """The logged requests of one target, and of one job when ``request_id`` is given."""
        with self._lock:
            return [
                r
                for r in self._log
                if r.target == target and (request_id is None or r.request_id == request_id)
            ]

    def clear_log(self) -> None:
        """Forget every logged request."""
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------------ in flight

    @property
    def in_flight(self) -> int:
        """Submit and status requests being handled right now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The peak of :attr:`in_flight` since start (or :meth:`reset_max_in_flight`)."""
        return self._max_in_flight

    def reset_max_in_flight(self) -> None:
        """Restart the peak count from the current :attr:`in_flight`."""
        with self._lock:
            self._max_in_flight = self._in_flight

    @contextlib.contextmanager
    def api_call(self) -> Iterator[None]:
        """Count one submit or status request as in flight while the block runs."""
        with self._lock:
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
