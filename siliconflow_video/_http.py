"""One request to the SiliconFlow API: auth, pacing, the concurrency cap, typed errors, and
the one retry path (``backoff``, exponential with full jitter, honouring ``Retry-After``)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable, Generator, Mapping
from datetime import UTC
from typing import Any, TypeVar

import aiohttp
import backoff
import yarl

from ._config import RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    MalformedResponseError,
    OverloadedError,
    RateLimitError,
    ServerError,
    SiliconFlowError,
    error_for_status,
)
from ._logging import logger
from ._pacing import Pacing

T = TypeVar("T")

TRACE_HEADER = "x-siliconcloud-trace-id"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date), or
    None when it is absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now is not None else time.time()
        seconds = when.timestamp() - current
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_text(body: bytes) -> tuple[str, int | None]:
    """SiliconFlow's message and numeric code from an error body, which may be a JSON object
    ``{code, message, data}``, a bare JSON string, or a gateway's text/HTML page."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        text = " ".join(body[:200].decode("utf-8", "replace").split())
        return (text or "(empty body)"), None
    if isinstance(data, str):
        return data, None
    if isinstance(data, dict):
        code = data.get("code")
        message = data.get("message") or data.get("data") or json.dumps(data)[:200]
        return str(message), (code if type(code) is int else None)
    return json.dumps(data)[:200], None


def status_error(
    status: int, headers: Mapping[str, str], body: bytes, *, request_id: str | None
) -> APIStatusError:
    """The typed error for an HTTP error answer."""
    message, code = _error_text(body)
    return error_for_status(status)(
        message,
        status_code=status,
        code=code,
        trace_id=headers.get(TRACE_HEADER),
        retry_after=parse_retry_after(headers.get("Retry-After")),
        request_id=request_id,
    )


def is_transient(exc: BaseException) -> bool:
    """Worth asking again: 408/429/5xx, connection trouble, timeouts, malformed 200s."""
    if isinstance(exc, (APIConnectionError, MalformedResponseError, RateLimitError, ServerError)):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code == 408


def is_safe_to_resubmit(exc: BaseException) -> bool:
    """Submitting is not idempotent: a retry after a request that may have reached the model
    could pay for a second video. Only answers that say "not done" are retried."""
    if isinstance(exc, (RateLimitError, OverloadedError)):
        return True
    return isinstance(exc, APIConnectionError) and not exc.maybe_processed


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for the ``attempt``-th retry (1-based)."""
    # The exponent is capped: 2.0 ** 1024 overflows, and a wait rides out outages of any
    # length, so ``attempt`` can grow without bound.
    return random.uniform(0.0, min(cap, base * 2.0 ** min(attempt - 1, 62)))


def retry_delay(policy: RetryPolicy, attempt: int, exc: BaseException | None) -> float:
    """How long to wait before the ``attempt``-th retry after ``exc``: the jittered backoff,
    or the server's ``Retry-After`` (capped by the policy) when that is longer. Jitter
    never shortens a Retry-After."""
    delay = backoff_delay(attempt, policy.base_delay, policy.max_delay)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


def _retry_waits(policy: RetryPolicy) -> Generator[float, BaseException | None, None]:
    """A ``backoff`` wait generator: it receives each exception, so a ``Retry-After`` from
    the server can win over the jittered exponential delay."""
    exc = yield 0.0  # primed by backoff with None
    attempt = 0
    while True:
        attempt += 1
        exc = yield retry_delay(policy, attempt, exc)


def with_retries(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> Awaitable[T]:
    """Run ``call`` with the policy's retries. The one retry path of the package's API calls."""

    def log_retry(details: Any) -> None:
        exc = details.get("exception")
        logger.debug(
            "retrying after %s (try %d of %d, waiting %.2fs)",
            exc,
            details["tries"],
            policy.max_attempts,
            details["wait"],
        )

    async def attempt() -> T:
        # A real coroutine function: backoff picks its async path by inspecting it.
        return await call()

    retrying = backoff.on_exception(
        lambda: _retry_waits(policy),
        APIError,
        max_tries=policy.max_attempts,
        giveup=lambda exc: not retry_if(exc),
        jitter=None,  # the jitter is in _retry_waits, where it cannot shorten a Retry-After
        on_backoff=log_retry,
        logger=None,  # backoff's own INFO/ERROR lines would repeat ours, even for a 400
    )(attempt)
    return retrying()


class EnvProxies:
    """The proxy for a URL from ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` and
    ``NO_PROXY``, as requests and httpx read them: keyword arguments for one aiohttp request.

    The client's sessions are made with ``trust_env=False`` and ask this per request
    instead: aiohttp's ``trust_env`` also applies ``.netrc`` credentials, which would clash
    with the API key's header and reach the video host, another origin. Looked up once per
    scheme, host and port (on some systems the lookup asks the OS).
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | None, int | None], dict[str, Any]] = {}

    def __call__(self, url: yarl.URL) -> dict[str, Any]:
        key = (url.scheme, url.host, url.port)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = _proxy_for(url)
        return found


def _proxy_for(url: yarl.URL) -> dict[str, Any]:
    if url.host is not None and urllib.request.proxy_bypass_environment(url.host):  # type: ignore[attr-defined]
        return {}
    configured = urllib.request.getproxies_environment().get(url.scheme)
    if not configured:
        return {}
    proxy = yarl.URL(configured if "://" in configured else f"http://{configured}")
    if proxy.user is None:
        return {"proxy": proxy}
    # Credentials from the proxy's own URL only (not .netrc), sent to the proxy alone.
    auth = aiohttp.BasicAuth(proxy.user, proxy.password or "")
    return {
        "proxy": proxy.with_user(None),
        "proxy_headers": {"Proxy-Authorization": auth.encode()},
    }


def no_proxies(url: yarl.URL) -> dict[str, Any]:
    """Every request direct (``trust_env=False``, or a session of the caller's own)."""
    return {}


#: How a request learns its proxy: ``EnvProxies()`` or ``no_proxies``.
Proxies = Callable[[yarl.URL], Mapping[str, Any]]


class APITransport:
    """Sends requests to the API over one session, under one concurrency cap and one
    rate governor. Holds the key; never shows it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        max_concurrent_requests: int,
        governor: Pacing,
        max_retry_after: float,
        proxies: Proxies = no_proxies,
    ) -> None:
        self._session = session
        self._proxies = proxies
        self._base_url = base_url
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 15.0))
        self._slots = asyncio.Semaphore(max_concurrent_requests)
        self.governor = governor
        self._max_retry_after = max_retry_after
        #: Whether any HTTP answer ever came: until one does, "cannot connect" is more
        #: likely a wrong base URL than an outage.
        self.ever_answered = False

    def __repr__(self) -> str:
        return f"<APITransport {self._base_url}>"

    async def post(self, path: str, payload: Mapping[str, Any], *, request_id: str | None) -> bytes:
        """One POST; the body of a 2xx answer, or a typed error. No retry here."""
        url = self._base_url + path
        data = json.dumps(payload, separators=(",", ":")).encode()
        turn = await self.governor.acquire()
        async with self._slots:
            started = time.monotonic()
            try:
                status, headers, body = await self._send(url, data)
            except aiohttp.ConnectionTimeoutError:
                # No connection was ever made: like "refused", the request surely did not
                # reach SiliconFlow (and a blackholed base URL must not be polled forever).
                err: APIConnectionError = APITimeoutError(
                    f"cannot connect to {self._base_url} within {self._timeout.sock_connect:g} s",
                    request_id=request_id,
                )
                err.maybe_processed = False
                raise err from None
            except TimeoutError:
                raise APITimeoutError(
                    f"no answer from {url} within {self._timeout.total:g} s",
                    request_id=request_id,
                ) from None
            except aiohttp.ClientConnectorError as exc:
                err = APIConnectionError(
                    f"cannot connect to {self._base_url}: {exc.os_error or exc}",
                    request_id=request_id,
                )
                err.maybe_processed = False
                raise err from None
            except aiohttp.ClientError as exc:
                raise APIConnectionError(
                    f"connection to {self._base_url} broke: {type(exc).__name__}: {exc}",
                    request_id=request_id,
                ) from None
            except RuntimeError as exc:
                if not self._session.closed:
                    raise
                raise SiliconFlowError(
                    "the AsyncClient's session was closed", request_id=request_id
                ) from exc
        logger.debug(
            "POST %s %s -> %d in %.3fs", path, request_id or "", status, time.monotonic() - started
        )
        self.ever_answered = True
        if status == 429:
            error = status_error(status, headers, body, request_id=request_id)
            pause = error.retry_after
            # A Retry-After pauses every request of the client: never for longer than the
            # policy allows, or one "Retry-After: 3600" would silence it for an hour.
            self.governor.on_rate_limited(
                None if pause is None else min(pause, self._max_retry_after), turn=turn
            )
            raise error
        self.governor.on_accepted()
        if status >= 400:
            raise status_error(status, headers, body, request_id=request_id)
        return body

    async def _send(self, url: str, data: bytes) -> tuple[int, Mapping[str, str], bytes]:
        async with self._session.post(
            # raise_for_status=False: a caller's session may raise on errors by default,
            # which would hide the typed errors (and the 429s the governor must see).
            url,
            data=data,
            headers=self._headers,
            timeout=self._timeout,
            raise_for_status=False,
            **self._proxies(yarl.URL(url)),
        ) as resp:
            return resp.status, resp.headers, await resp.read()
