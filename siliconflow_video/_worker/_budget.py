"""One request rate for a whole fleet of workers: a row in PostgreSQL per account.

Each worker's own :class:`RateGovernor` adapts to its own 429s only, so N workers each
settle near the account's limit and the fleet overshoots it N-fold. Here the workers on one
account (one API key and base URL) share one row of ``sfv_rate_budget``: the fleet's rate
and the next free start slot. A new row starts at ``start_rate`` and grows fast (a slow
start, as TCP's): N workers at full concurrency would otherwise send N x concurrency calls
before the first 429 reached any of them.

Before each status call a worker, in one short transaction, reports how its calls since
its last turn were answered (accepted, 429, a Retry-After), lets the row's rate adapt to
that as ``RateGovernor`` does for one process (down to a little under what the fleet got
accepted in the last window on a 429; creeping back up while none comes; lifted once far
above demand), takes the next slot, and sleeps until it. A worker takes one slot at a time
(its tasks queue for their turns), so the fleet holds at most one slot per worker taken at
an old rate when a cut comes; the 429s of those count once a window, while a 429 of a call
taken after the cut cuts again at once. Times are PostgreSQL's clock
(``clock_timestamp()``), so machines whose clocks disagree still space their calls right.

The row holds a hash of the API key and base URL, never the key. procrastinate has no rate
limit of its own: this is not a queue, only a budget.

While PostgreSQL cannot be reached the worker paces on its own governor (fed with every
answer all along, so it is warm) and tries the row again every ``retry_every`` seconds: an
outage slows nothing down for good, nor stops polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import attrs

from .._journal._pgschema import Target
from .._pacing import GovernorStats, RateGovernor

__all__ = ["BudgetRow", "Params", "SharedBudget", "account_key", "advance"]

logger = logging.getLogger("siliconflow_video.worker")

TABLE = "sfv_rate_budget"
#: Taken while a worker creates the table: workers started together create it once.
_TABLE_LOCK = 0x5F5C_1E10
#: A rate above this many calls a second is no limit at all (and keeps the floats sane).
_CEILING = 10_000.0

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    account       TEXT PRIMARY KEY,
    rate          DOUBLE PRECISION,
    next_at       DOUBLE PRECISION NOT NULL DEFAULT 0,
    paused_until  DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at    DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_limited  DOUBLE PRECISION NOT NULL DEFAULT '-Infinity',
    last_decrease DOUBLE PRECISION NOT NULL DEFAULT '-Infinity',
    win_start     DOUBLE PRECISION NOT NULL DEFAULT 0,
    win_accepted  INTEGER NOT NULL DEFAULT 0,
    prev_accepted INTEGER NOT NULL DEFAULT 0,
    settled       DOUBLE PRECISION NOT NULL DEFAULT 0
)
"""
_COLUMNS = (
    "rate",
    "next_at",
    "paused_until",
    "updated_at",
    "last_limited",
    "last_decrease",
    "win_start",
    "win_accepted",
    "prev_accepted",
    "settled",
)


def account_key(api_key: str, base_url: str) -> str:
    """The row's key for an account: a hash of its API key and base URL (never the key)."""
    return hashlib.sha256(f"siliconflow-video\n{base_url}\n{api_key}".encode()).hexdigest()


@attrs.frozen
class Params:
    """The adaptation's constants: ``RateGovernor``'s defaults."""

    window: float = 1.0
    headroom: float = 0.92
    creep: float = 0.03
    recovery: float = 10.0
    min_rate: float = 0.2
    min_sample: int = 4
    #: A new account row's first rate (None: no limit until a 429). N workers at full
    #: concurrency would otherwise send N x concurrency calls before the first 429 came
    #: back; from here it grows half again a second (doubling in under 2 s) while no 429
    #: comes, and is lifted after a few quiet seconds if the fleet needs far less.
    start_rate: float | None = 10.0
    #: The most the rate grows a second once above ``settled`` (just under the limit last
    #: found). Far below it, it climbs as ``RateGovernor``'s does (up to 50 % a second);
    #: near it, fast growth would overshoot, and a fleet pays for an overshoot with every
    #: slot already handed out at the old rate (TCP's slow start, then its congestion
    #: avoidance).
    near_growth: float = 0.05
    #: A 429 of a call taken after the last cut, within a window of it, cuts the rate to
    #: this share of the cut one: measured with 4 workers against a token bucket, 0.92
    #: (``headroom``) left 4-5 % of the calls 429, 0.7 about 3 %, for 2 % less throughput.
    cut_again: float = 0.7


@attrs.frozen
class BudgetRow:
    """One account's row: the fleet's rate (None: no limit) and its bookkeeping."""

    rate: float | None = None
    next_at: float = 0.0
    paused_until: float = 0.0
    updated_at: float = 0.0
    last_limited: float = float("-inf")
    last_decrease: float = float("-inf")
    win_start: float = 0.0
    win_accepted: int = 0
    prev_accepted: int = 0
    #: The rate of the last cut anchored to what the fleet got accepted: the limit is
    #: near it, so the creep above it is gentle (``near_growth``).
    settled: float = 0.0


def advance(
    row: BudgetRow,
    now: float,
    *,
    accepted: int = 0,
    limited: int = 0,
    retry_after: float | None = None,
    limited_turn: float | None = None,
    params: Params = Params(),
) -> tuple[BudgetRow, float]:
    """The row after one worker's report (answers since its last turn) and its taking of
    the next slot at ``now``; and the seconds that worker waits for its slot.

    ``limited_turn`` is the latest turn (the row's clock when it was taken) among the
    reported 429s' requests. A 429 of a request taken at or after the last cut says the cut rate
    is still too high: it is cut again at once, not a window later (as TCP cuts once per
    round trip). One taken before it was sent at the old rate, and counts once per window.
    Without this, a slow start that overshot (a token bucket hides the limit until it is
    empty) would go on sending at the first cut's rate, still above it, for a whole window."""
    p = params
    if row.updated_at == 0.0 and p.start_rate is not None:
        # The fleet's first call on this account: a slow start, as if the last 429 were
        # four windows ago (so it creeps at nearly full speed at once, and the limit can
        # be lifted ``recovery`` - 4 windows from now).
        row = attrs.evolve(row, rate=p.start_rate, updated_at=now, last_limited=now - 4 * p.window)
    # Accepted answers in whole windows: the last complete one is the fleet's measure.
    win_start, win, prev = row.win_start, row.win_accepted, row.prev_accepted
    if now - win_start >= 2 * p.window:
        win_start, win, prev = now, 0, 0
    elif now - win_start >= p.window:
        win_start, win, prev = win_start + p.window, 0, win
    win += accepted
    # Accepted over the last window, sliding: this window's count so far and the part of
    # the previous one it still covers (a young fleet's first window counts whole, as
    # RateGovernor counts a young client's).
    recent = win + prev * max(0.0, 1.0 - (now - win_start) / p.window)
    rate = row.rate
    last_limited, last_decrease = row.last_limited, row.last_decrease
    next_at, paused_until = row.next_at, row.paused_until
    settled = row.settled
    if rate is not None and not limited:
        # Creep just after a 429, then faster and faster (doubling each quiet window); the
        # time elapsed is the fleet's, so N workers creep together as one governor would.
        quiet = now - last_limited
        growth = min(0.5, p.creep * 2.0 ** min(quiet / p.window, 10.0))
        if row.settled and rate >= row.settled:
            growth = min(growth, p.near_growth)
        rate += rate * growth * max(now - row.updated_at, 0.0)
        if rate > _CEILING or (quiet >= p.recovery and rate > 2 * recent / p.window + 1):
            rate = None  # far above what the fleet uses: the limit no longer binds
    if limited:
        last_limited = now
        if retry_after is not None and retry_after > 0:
            paused_until = max(paused_until, now + retry_after)
        trickle = rate is None and recent + limited < p.min_sample
        # The cutting call's own turn is the cut's moment, and its slot is at the new rate.
        fresh = limited_turn is not None and limited_turn >= last_decrease
        if (fresh or now - last_decrease >= p.window) and not trickle:
            # Once a window, or at once for a 429 of a call taken after the last cut: the
            # 429s of calls already in flight count once.
            cut_before, last_decrease = last_decrease, now
            # Nothing got through (a daily quota?): halve until something does.
            halved = (rate or limited / p.window) / 2
            target = recent / p.window * p.headroom if recent >= 2 else halved
            if rate is not None:
                # Cut again within the window: the rate of the last cut is still too high,
                # and what was accepted lately still counts the server's burst.
                again = now - cut_before < p.window
                target = min(target, rate * (p.cut_again if again else p.headroom))
            rate = max(p.min_rate, target)
            next_at = max(next_at, now + 1.0 / rate)
            if recent >= 2:
                settled = rate
    start = max(now, paused_until)
    if rate is not None:
        start = max(start, next_at)
        next_at = start + 1.0 / rate
    new = BudgetRow(
        rate=rate,
        next_at=next_at,
        paused_until=paused_until,
        updated_at=now,
        last_limited=last_limited,
        last_decrease=last_decrease,
        win_start=win_start,
        win_accepted=win,
        prev_accepted=prev,
        settled=settled,
    )
    return new, start - now


class SharedBudget:
    """A :class:`~siliconflow_video._pacing.Pacing` for an AsyncClient: the fleet's rate
    in PostgreSQL (see the module docstring), this worker's own governor while it is out of
    reach. ``await open()`` before use, ``await aclose()`` after."""

    def __init__(
        self,
        target: Target,
        account: str,
        *,
        timeout: float = 3.0,
        retry_every: float = 5.0,
        params: Params = Params(),
    ) -> None:
        self._target = target
        self._account = account
        self._timeout = timeout
        self._retry_every = retry_every
        self._params = params
        self._local = RateGovernor(
            window=params.window,
            headroom=params.headroom,
            creep=params.creep,
            recovery=params.recovery,
            min_rate=params.min_rate,
            min_sample=params.min_sample,
        )
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._turns = asyncio.Lock()
        self._down_until = float("-inf")
        self._accepted = 0
        self._limited = 0
        self._retry_after: float | None = None
        #: The latest turn among the 429s counted toward the row (see ``advance``).
        self._limited_turn: float | None = None
        self._rate: float | None = None
        self._requests = 0
        self._rate_limited = 0
        #: Turns taken from the shared row, and those paced locally (PostgreSQL away).
        self.shared_turns = 0
        self.local_turns = 0

    def __repr__(self) -> str:
        return f"<SharedBudget {self._target.shown!r}>"

    @property
    def shared(self) -> bool:
        """Whether the last turn came from the shared row (False: paced locally)."""
        return self._conn is not None

    def stats(self) -> GovernorStats:
        return GovernorStats(self._rate, self._requests, self._rate_limited)

    async def open(self) -> None:
        """Create the table and the account's row unless they are there; a server out of
        reach is no error here (the first turns are paced locally)."""
        async with self._lock:
            await self._connect()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

    def on_accepted(self) -> None:
        self._local.on_accepted()
        self._accepted += 1

    def on_rate_limited(
        self, retry_after: float | None = None, *, turn: float | None = None
    ) -> None:
        self._local.on_rate_limited(retry_after)
        self._rate_limited += 1
        self._limited += 1
        if retry_after is not None:
            self._retry_after = max(self._retry_after or 0.0, retry_after)
        if turn is not None:
            last = self._limited_turn
            self._limited_turn = turn if last is None else max(last, turn)

    async def acquire(self) -> float | None:
        """Wait for this call's slot; its turn on the row's clock (None: paced locally)."""
        self._requests += 1
        # One turn at a time, its wait included: this worker holds at most one slot ahead.
        # Slots taken ahead by every waiting task (the fleet's concurrency) would all go out
        # at the old rate after a 429 cut it, each a likely 429 of its own.
        async with self._turns:
            taken = await self._turn()
            if taken is None:
                self.local_turns += 1
                self._rate = self._local.rate
                await self._local.acquire()
                return None
            self.shared_turns += 1
            wait, turn = taken
            if wait > 0:
                await asyncio.sleep(wait)
            return turn

    # -- PostgreSQL ----------------------------------------------------------------------

    async def _turn(self) -> tuple[float, float] | None:
        """The seconds to wait for this call's slot in the shared row and the row's clock
        when it was taken; None when the row cannot be reached (pace locally)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._conn is None:
                if loop.time() < self._down_until:
                    return None
                if not await self._connect():
                    return None
            report = (self._accepted, self._limited, self._retry_after, self._limited_turn)
            self._accepted, self._limited, self._retry_after = 0, 0, None
            self._limited_turn = None
            try:
                return await asyncio.wait_for(self._take(*report), self._timeout)
            except Exception as exc:  # noqa: BLE001 - psycopg's, a timeout: the db is away
                self._away(exc)
                await self._drop()
                return None
            except BaseException:
                # Cancelled mid-transaction: the connection's state is unknown, so it is
                # not used again (the next turn connects anew).
                await self._drop()
                raise

    async def _take(
        self, accepted: int, limited: int, retry_after: float | None, limited_turn: float | None
    ) -> tuple[float, float]:
        columns = ", ".join(_COLUMNS)
        async with self._conn.transaction():
            cur = await self._conn.execute(
                f"SELECT {columns}, extract(epoch FROM clock_timestamp())::float8 "
                f"FROM {TABLE} WHERE account = %s FOR UPDATE",
                (self._account,),
            )
            found = await cur.fetchone()
            if found is None:  # the table emptied by hand: start again
                await self._conn.execute(
                    f"INSERT INTO {TABLE} (account) VALUES (%s) ON CONFLICT DO NOTHING",
                    (self._account,),
                )
                return 0.0, float("-inf")  # no turn: its 429s count once per window
            *values, now = found
            row = BudgetRow(**dict(zip(_COLUMNS, values, strict=True)))
            new, wait = advance(
                row,
                float(now),
                accepted=accepted,
                limited=limited,
                retry_after=retry_after,
                limited_turn=limited_turn,
                params=self._params,
            )
            await self._conn.execute(
                f"UPDATE {TABLE} SET "
                + ", ".join(f"{c} = %s" for c in _COLUMNS)
                + " WHERE account = %s",
                (*attrs.astuple(new), self._account),
            )
        self._rate = new.rate
        return wait, float(now)

    async def _connect(self) -> bool:
        import psycopg

        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    self._target.conninfo,
                    autocommit=True,
                    connect_timeout=max(int(self._timeout), 1),
                    application_name="siliconflow-video-worker",
                ),
                self._timeout + 1,
            )
        except Exception as exc:  # noqa: BLE001 - psycopg's, a timeout: the db is away
            self._away(exc)
            return False
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_TABLE_LOCK,))
                await conn.execute(_CREATE)
                await conn.execute(
                    f"INSERT INTO {TABLE} (account) VALUES (%s) ON CONFLICT DO NOTHING",
                    (self._account,),
                )
        except Exception as exc:  # noqa: BLE001 - the db went away, or refuses the table
            self._away(exc)
            await conn.close()
            return False
        if self._down_until > float("-inf"):
            logger.info("worker: the shared rate budget is back; pacing with the fleet")
        self._conn = conn
        self._down_until = float("-inf")
        return True

    def _away(self, exc: BaseException) -> None:
        """The row cannot be reached: pace locally, try again in ``retry_every`` seconds."""
        first = self._down_until == float("-inf")
        self._down_until = asyncio.get_running_loop().time() + self._retry_every
        # What was counted toward the row is dropped: dumped in one window later, it
        # would read as a burst of acceptance.
        self._accepted, self._limited, self._retry_after = 0, 0, None
        self._limited_turn = None
        if first:
            text = " ".join(self._target.scrub(str(exc)).split()) or type(exc).__name__
            logger.warning(
                "worker: the shared rate budget in %s is out of reach (%s); pacing on this "
                "worker's own until it is back",
                self._target.shown,
                text,
            )

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                await conn.close()
