"""requestId → file name: nothing a server sends may escape, hide or collide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from siliconflow_video import AsyncClient, UnsafeFileNameError
from siliconflow_video._naming import (
    MAX_NAME_BYTES,
    MAX_STEM,
    default_name,
    safe_stem,
    target_path,
)
from siliconflow_video.testing import FakeSiliconFlow

DEST = Path("/srv/videos/out")
URL = "https://bucket.oss-cn-shanghai.aliyuncs.com/v/abc.mp4?Expires=1&Signature=x"

_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)", re.I)

NASTY_IDS = [
    "",
    ".",
    "..",
    "...",
    "../../x",
    "../../../etc/passwd",
    "/abs",
    "/",
    "a/b",
    "a\\b",
    "..\\..\\windows",
    "C:\\x",
    "C:x",
    "x\x00y",
    "\x00",
    "line\nbreak",
    "tab\there",
    "\x7f",
    "\u202eevil.mp4",  # right-to-left override
    "\u200b",  # zero-width space
    "\uff0e\uff0e",  # fullwidth ".."
    "\uff0fetc",  # fullwidth "/"
    "a\u2215b",  # division slash
    "CON",
    "con",
    "Con.txt",
    "PRN",
    "AUX",
    "NUL",
    "nul.tar.gz",
    "COM1",
    "com9.mp4",
    "LPT1",
    "lpt9",
    "COM0",
    "CON ",
    "trailing.",
    "trailing ",
    "trailing. .",
    " leading",
    ".hidden",
    "-rf",
    "a" * 121,
    "a" * 5000,
    "é" * 300,
    "视频" * 100,
    "🎬" * 80,
    "a_b",
    "job_123_deadbeef",
]


def check_safe_name(dest: Path, name: str) -> None:
    path = target_path(dest, name)
    assert path.parent == dest
    assert path.name == name
    assert (dest / name).resolve().parent == dest.resolve()
    assert name
    assert not name.startswith(".")
    assert not name.endswith((".", " "))
    assert not _RESERVED.fullmatch(name.split(".", 1)[0])
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert len((name + ".part.json.tmp").encode("utf-8")) <= 255
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)


URLS = st.one_of(
    st.just(URL),
    st.builds(lambda p: f"https://h/{p}?Signature=x", st.text()),
    st.text(),
)


@given(st.text(), st.integers(min_value=0, max_value=10_000), URLS)
@settings(max_examples=500)
def test_default_name_is_a_safe_direct_child(request_id: str, index: int, url: str) -> None:
    """Any requestId and URL give a plain, visible, non-reserved name directly inside dest."""
    check_safe_name(DEST, default_name(request_id, index, url))


@given(st.text(), st.text())
@settings(max_examples=500)
def test_distinct_ids_give_distinct_names(a: str, b: str) -> None:
    """Two different requestIds never share a stem or a default name."""
    if a != b:
        assert safe_stem(a) != safe_stem(b)
        assert default_name(a, 0, URL) != default_name(b, 0, URL)


@given(st.text(alphabet="abcdef0123456789-._/\\ \x00.", max_size=40))
@settings(max_examples=500)
def test_near_miss_ids_stay_distinct(request_id: str) -> None:
    """Ids built from the characters that get replaced still never collide with the
    ordinary id they resemble."""
    stem = safe_stem(request_id)
    cleaned = re.sub(r"[^A-Za-z0-9-]", "_", request_id)
    if stem != request_id:
        assert stem != cleaned
        assert re.fullmatch(r"[A-Za-z0-9_-]*_[0-9a-f]{8}", stem)


@given(st.text())
def test_stem_shape(request_id: str) -> None:
    """A stem is 1-120 characters of [A-Za-z0-9._-], visible and not a device name."""
    stem = safe_stem(request_id)
    assert 1 <= len(stem) <= MAX_STEM
    assert re.fullmatch(r"[A-Za-z0-9._-]+", stem)
    assert not stem.startswith((".", "-"))
    assert not _RESERVED.fullmatch(stem.split(".", 1)[0])


@pytest.mark.parametrize(
    "request_id",
    [
        "8a1c2f60-5b7e-4e8a-9c3d-0f1e2d3c4b5a",
        "4e2a8a5e0f9d4b7c8e1f2a3b4c5d6e7f",
        "abc-123",
        "a" * MAX_STEM,
        "console",
        "com10",
    ],
)
def test_ordinary_ids_pass_unchanged(request_id: str) -> None:
    """SiliconFlow's uuid-like ids ([a-z0-9-]) are used as they are."""
    assert safe_stem(request_id) == request_id
    assert default_name(request_id, 2, URL) == f"{request_id}_2.mp4"


@given(st.text(), st.text())
@example("Job-1", "job-1")
@settings(max_examples=500)
def test_distinct_ids_give_names_apart_on_case_insensitive_file_systems(a: str, b: str) -> None:
    """Two different requestIds never give default names that a case-insensitive file
    system (macOS, Windows) would take for one."""
    if a != b:
        assert default_name(a, 0, URL).casefold() != default_name(b, 0, URL).casefold()


@pytest.mark.parametrize(("a", "b"), [("Job-1", "job-1"), ("ABC", "abc"), ("ABC-1", "abc-1")])
def test_ids_that_differ_only_in_case_get_different_names(a: str, b: str) -> None:
    """``Job-1`` and ``job-1`` are two files even where case does not count; the
    all-lowercase id keeps its name."""
    assert default_name(a, 0, URL).casefold() != default_name(b, 0, URL).casefold()
    assert default_name(b, 0, URL) == f"{b}_0.mp4"


async def test_ids_that_differ_only_in_case_both_download(
    fake: FakeSiliconFlow, client: AsyncClient, tmp_path: Path
) -> None:
    """Two jobs whose ids differ only in case, into one folder: both succeed, each with its
    own file holding its own video."""
    upper = fake.add_job("Job-1", videos=[1000])
    lower = fake.add_job("job-1", videos=[2000])
    outcomes = await client.wait_and_download([upper, lower], tmp_path)
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    for outcome in outcomes:
        (video,) = outcome.files
        assert video.path.read_bytes() == fake.video_bytes(outcome.request_id)
    assert outcomes[0].paths[0].name.casefold() != outcomes[1].paths[0].name.casefold()


@pytest.mark.parametrize("request_id", NASTY_IDS)
def test_nasty_ids_become_safe_names(tmp_path: Path, request_id: str) -> None:
    """Traversal, absolute paths, separators, NUL/control characters, lookalikes, reserved
    device names, trailing dots and huge ids all end up as one safe name in dest."""
    name = default_name(request_id, 0, URL)
    check_safe_name(tmp_path, name)
    assert safe_stem(request_id) != request_id
    assert re.fullmatch(r"[A-Za-z0-9_-]*_[0-9a-f]{8}", safe_stem(request_id))


def test_nasty_ids_do_not_collide() -> None:
    """The nasty ids above give pairwise different names."""
    names = {default_name(rid, 0, URL) for rid in NASTY_IDS}
    assert len(names) == len(NASTY_IDS)


@pytest.mark.parametrize(
    ("url", "suffix"),
    [
        ("https://h/v/a.mp4?Expires=1", ".mp4"),
        ("https://h/v/a.WEBM", ".webm"),
        ("https://h/v/a.mov#frag", ".mov"),
        ("https://h/v/a.exe", ".mp4"),
        ("https://h/v/a.mp4/..%2f..%2fx.sh", ".mp4"),
        ("https://h/v/noext", ".mp4"),
        ("https://h/v/a.m%70%34", ".mp4"),
        ("http://[::1/x.mkv", ".mp4"),
        ("", ".mp4"),
    ],
)
def test_suffix_comes_from_a_video_url_path_only(url: str, suffix: str) -> None:
    """The extension is a known video suffix of the URL path, else .mp4."""
    assert default_name("abc", 0, url) == f"abc_0{suffix}"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".", "'.' and '..'"),
        ("..", "'.' and '..'"),
        ("../x.mp4", "separator"),
        ("a/b.mp4", "separator"),
        ("a\\b.mp4", "separator"),
        ("/etc/passwd", "separator"),
        ("a\x00.mp4", "NUL"),
        ("a\nb.mp4", "control"),
        ("a\u202e4pm.exe", "invisible"),
        ("\uff0e\uff0e", "'.' and '..'"),
        ("a\uff0fb.mp4", "separator"),
        ("a\u2215b.mp4", "separator"),
        (".hidden.mp4", "hide"),
        ("\uff0ehidden.mp4", "hide"),
        ("CON", "reserved"),
        ("con.mp4", "reserved"),
        ("Lpt1.txt", "reserved"),
        ("NUL .mp4", "reserved"),
        ("video.mp4.", "ends with a dot"),
        ("video.mp4 ", "ends with a dot or a space"),
        (" video.mp4", "starts with a space"),
        ("a:b.mp4", "Windows does not allow"),
        ("what?.mp4", "Windows does not allow"),
        ("x" * 197 + ".mp4", "bytes long"),
        ("视" * 67 + ".mp4", "bytes long"),
    ],
)
def test_target_path_rejects_unsafe_names(name: str, why: str) -> None:
    """A name from a naming callback that is not one plain, safe component is refused with
    a message saying what is wrong."""
    with pytest.raises(UnsafeFileNameError) as info:
        target_path(DEST, name)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)


def test_target_path_rejects_non_strings() -> None:
    """A naming callback that returns something other than a str is refused clearly."""
    with pytest.raises(UnsafeFileNameError, match="must be a str"):
        target_path(DEST, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["video.mp4", "视频_1.mp4", "clip (1).mp4", "a-b_c.d.mp4", "x" * 196 + ".mp4"]
)
def test_target_path_accepts_plain_names(name: str) -> None:
    """Ordinary names, non-ASCII ones included, are accepted and joined to dest."""
    assert target_path(DEST, name) == DEST / name
