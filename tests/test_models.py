"""Status bodies: the documented shape parses, anything else is a MalformedResponseError."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import siliconflow_video as sv
from siliconflow_video import MalformedResponseError, Status, VideoStatus
from siliconflow_video._http import parse_retry_after
from siliconflow_video._models import parse_status

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)

status_like = st.fixed_dictionaries(
    {"status": st.sampled_from(["InQueue", "InProgress", "Succeed", "Failed", "Paused", 3])},
    optional={
        "reason": json_values,
        "results": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "videos": st.none() | st.lists(st.fixed_dictionaries({"url": json_values})),
                "timings": json_values,
                "seed": json_values,
            },
        )
        | json_values,
        "position": json_values,
    },
)


def parse_or_error(body: bytes) -> VideoStatus | MalformedResponseError:
    """The status, or the MalformedResponseError; any other exception propagates."""
    try:
        return parse_status(body, "rid")
    except MalformedResponseError as exc:
        return exc


@given(json_values)
def test_any_json_gives_a_status_or_malformed(value: object) -> None:
    """Any JSON document as a status body parses or raises MalformedResponseError, nothing else."""
    outcome = parse_or_error(json.dumps(value).encode())
    assert isinstance(outcome, VideoStatus) or outcome.field.startswith("$")


@given(status_like)
def test_near_miss_bodies_give_a_status_or_malformed(value: dict[str, object]) -> None:
    """Bodies close to the documented shape never raise anything but MalformedResponseError."""
    outcome = parse_or_error(json.dumps(value).encode())
    if isinstance(outcome, VideoStatus):
        assert outcome.status in set(Status)
        assert all(isinstance(u, str) for u in outcome.urls)
    else:
        assert outcome.field.startswith("$")


@given(st.binary())
def test_any_bytes_give_a_status_or_malformed(body: bytes) -> None:
    """Arbitrary bytes as a status body never escape as another exception."""
    assert isinstance(parse_or_error(body), (VideoStatus, MalformedResponseError))


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    """A body nested deeper than the JSON parser's recursion limit is just malformed."""
    with pytest.raises(MalformedResponseError):
        parse_status(b"[" * 100_000 + b"]" * 100_000, "rid")


def test_unknown_keys_are_ignored_and_status_compares_to_strings() -> None:
    """Extra keys are ignored, and Status members equal the API's strings."""
    status = parse_status(b'{"status": "InProgress", "position": 3, "extra": {}}', "rid")
    assert status.status == "InProgress"
    assert status.status is Status.IN_PROGRESS
    assert not status.is_terminal


def test_success_without_urls_is_malformed() -> None:
    """A Succeed that lists no video is asked again, never taken as done with no files."""
    with pytest.raises(MalformedResponseError) as caught:
        parse_status(b'{"status": "Succeed", "results": {"videos": []}}', "rid")
    assert caught.value.field == "$.results.videos"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: go now
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds or an HTTP-date; junk is ignored, never negative."""
    assert parse_retry_after(header) == expected


def test_retry_after_date_in_the_future() -> None:
    """An HTTP-date Retry-After counts from now."""
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0


@given(st.text())
def test_retry_after_never_crashes(header: str) -> None:
    """Any header text gives None or a finite non-negative delay."""
    value = parse_retry_after(header)
    assert value is None or value >= 0


def test_unreadable_extras_do_not_cost_the_video() -> None:
    """A wrong type in reason, timings or seed reads as None; the URL still counts."""
    body = json.dumps(
        {
            "status": "Succeed",
            "reason": 5,
            "results": {"videos": [{"url": "https://h/v.mp4"}], "timings": 7, "seed": "x"},
        }
    ).encode()
    status = parse_status(body, "rid")
    assert status.urls == ["https://h/v.mp4"]
    assert status.reason is None
    assert status.results is not None
    assert (status.results.timings, status.results.seed) == (None, None)


def test_signed_queries_stay_out_of_reprs_and_excerpts() -> None:
    """repr(status) and a malformed body's excerpt drop a signed URL's query string."""
    url = "https://bucket.oss/v.mp4?Expires=1&Signature=SECRET"
    status = parse_status(
        json.dumps({"status": "Succeed", "results": {"videos": [{"url": url}]}}).encode(), "r"
    )
    assert "SECRET" not in repr(status)
    assert status.urls == [url]
    bad = json.dumps({"status": "Paused", "results": {"videos": [{"url": url}]}}).encode()
    with pytest.raises(MalformedResponseError) as caught:
        parse_status(bad, "r")
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: sv.DownloadPolicy(max_url_refreshes=-1), "max_url_refreshes"),
        (lambda: sv.DownloadPolicy(max_loop_write=-0.5), "max_loop_write"),
        (lambda: sv.PollPolicy(growth=0.5), "growth"),
        (lambda: sv.PollPolicy(interval=5, max_interval=1), "max_poll_interval"),
    ],
)
def test_policies_refuse_bad_values(make: Callable[[], object], field: str) -> None:
    """Every policy field is checked when the policy is made: a typed ConfigurationError
    naming the field, not a failure deep inside a download."""
    with pytest.raises(sv.ConfigurationError, match=field):
        make()


def test_client_takes_a_poll_policy_and_checks_policy_types() -> None:
    """AsyncClient(poll=PollPolicy(...)) is used as given (the shorthands override its two
    fields), and a policy of the wrong type is a ConfigurationError."""
    policy = sv.PollPolicy(interval=2.0, max_interval=30.0, growth=1.2, jitter=0.1)
    client = sv.AsyncClient("sk-x", "http://127.0.0.1:9/v1", poll=policy)
    assert client.poll_policy == policy
    client = sv.AsyncClient("sk-x", "http://127.0.0.1:9/v1", poll=policy, poll_interval=3.0)
    assert client.poll_policy == sv.PollPolicy(
        interval=3.0, max_interval=30.0, growth=1.2, jitter=0.1
    )
    with pytest.raises(sv.ConfigurationError, match="retry must be a RetryPolicy"):
        sv.AsyncClient("sk-x", "http://127.0.0.1:9/v1", retry=policy)  # type: ignore[arg-type]
