"""The PostgreSQL password is used and never shown, from wherever libpq takes it: the URL
(even with an unencoded '@' or '/'), libpq's ``password=`` keyword form, ``PGPASSWORD``,
a ``.pgpass`` file; and wherever it could show: ``repr``, ``path``, errors (psycopg's own
text among them), log lines, and the CLI's ``jobs`` output. Against a real server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from siliconflow_video._exceptions import JournalError
from siliconflow_video._journal import journal_name, open_journal, read_jobs
from siliconflow_video._journal._postgres import PostgresJournal

from . import _postgres
from ._postgres import Cluster

postgres = _postgres.postgres

#: A password libpq's URL reading would cut at its first '@' (the rest becoming the host).
ODD = "Sekr1t@Part2/x"
#: Each piece must stay hidden too: half a password is a password.
PIECES = ("Sekr1t", "Part2")
WRONG = "Wr0ng@Guess9"
WRONG_PIECES = ("Wr0ng", "Guess9")


def hidden(text: str, pieces: tuple[str, ...] = PIECES + WRONG_PIECES) -> bool:
    return not any(piece in text for piece in pieces)


@pytest.fixture(scope="module")
def odd_role(postgres: Cluster) -> tuple[str, str]:
    """A role whose password holds an '@' and a '/', owning a database: (role, db)."""
    return postgres.new_database(password=ODD)


@pytest.fixture
def schema(postgres: Cluster, odd_role: tuple[str, str]) -> str:
    return postgres.new_schema(*odd_role)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert all(hidden(record.getMessage()) for record in caplog.records)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SILICONFLOW_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "siliconflow_video", "-v", *args],
        env={**base, **(env or {})},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bob:Sekr1t@h:5/db", "postgresql://bob@h:5/db"),
        ("postgresql://bob:Sekr1t@Part2@h:5/db", "postgresql://bob@h:5/db"),
        ("postgresql://bob:Sekr1t/Part2@h:5/db?sslmode=require", "postgresql://bob@h:5/db"),
        ("postgresql://bob:Sekr1t%40Part2@h:5/db", "postgresql://bob@h:5/db"),
        ("postgres://bob@h/db?password=Sekr1t", "postgresql://bob@h:5432/db"),
        ("postgresql+psycopg://bob:Sekr1t@h:5/db", "postgresql://bob@h:5/db"),
        ("postgresql://u@srv:Sekr1t@h:5/db", "postgresql://u@srv@h:5/db"),  # Azure's user@server
        ("postgresql://h:5/db?sslcert=/etc/a@b.pem", "postgresql://me@h:5/db"),  # '@' in the query
        ("host=h port=5 user=bob password='Sekr1t Part2' dbname=db", "postgresql://bob@h:5/db"),
    ],
)
def test_how_a_url_is_read_and_shown(url: str, shown: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every URL form libpq takes is named postgresql://user@host:port/db, without a
    piece of its password, even when the password holds an unencoded '@' or '/'."""
    monkeypatch.setenv("PGUSER", "me")
    journal = PostgresJournal(url)
    assert journal.path == shown
    assert hidden(repr(journal))
    assert hidden(journal_name(url))


async def check_journal(url: str, shown: str, *, job: str) -> None:
    """The journal at ``url`` (an empty schema) works, and shows itself as ``shown``
    only."""
    with pytest.raises(JournalError, match="holds no journal yet") as caught:
        await open_journal(url, read_only=True).open()  # an error that names the journal
    assert hidden(str(caught.value))
    assert shown in str(caught.value)
    journal = open_journal(url)
    assert isinstance(journal, PostgresJournal)
    assert journal.path == shown
    assert journal_name(url) == shown
    async with journal:
        assert hidden(repr(journal))
        await journal.accept([job], dest="/v")
        with pytest.raises(JournalError) as caught:
            await journal.succeeded("nope", ["https://v.example/a.mp4"])
        assert hidden(str(caught.value))
    assert job in [j.job_key for j in read_jobs(url)]


async def test_an_unencoded_at_sign_in_the_url_password(
    postgres: Cluster,
    odd_role: tuple[str, str],
    schema: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    """postgresql://user:Sekr1t@Part2/x@host/db is read as that password (it connects),
    and no piece of it shows in the name, repr, errors, logs or `jobs` output."""
    role, db = odd_role
    where = f"127.0.0.1:{postgres.port}/{db}?options=-csearch_path%3D{schema}"
    url = f"postgresql://{role}:{ODD}@{where}"
    shown = f"postgresql://{role}@127.0.0.1:{postgres.port}/{db}"
    await check_journal(url, shown, job="r-url")

    wrong = f"postgresql://{role}:{WRONG}@{where}"
    with pytest.raises(JournalError, match="user and password") as caught:
        await PostgresJournal(wrong).open()
    assert hidden(str(caught.value))
    assert caught.value.path == shown
    with pytest.raises(JournalError) as caught:
        read_jobs(wrong)
    assert hidden(str(caught.value))

    listed = cli("jobs", "--journal", url)
    assert listed.returncode == 0, listed.stderr
    assert "r-url" in listed.stdout
    refused = cli("jobs", "--journal", wrong)
    assert refused.returncode != 0
    assert "password" in refused.stderr
    for done in (listed, refused):
        assert hidden(done.stdout + done.stderr)


async def test_the_keyword_form(
    postgres: Cluster,
    odd_role: tuple[str, str],
    schema: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    """libpq's "host=... password=..." form is a PostgreSQL journal, named
    postgresql://user@host:port/db; its password shows nowhere, nor when psycopg's own
    reading of it fails (its message quotes the string)."""
    role, db = odd_role
    base = f"host=127.0.0.1 port={postgres.port} user={role} dbname={db}"
    options = f"options='-csearch_path={schema}'"
    good = f"{base} password='{ODD}' {options}"
    shown = f"postgresql://{role}@127.0.0.1:{postgres.port}/{db}"
    await check_journal(good, shown, job="r-keywords")

    wrong = f"{base} password='{WRONG}' {options}"
    with pytest.raises(JournalError, match="user and password") as caught:
        await PostgresJournal(wrong).open()
    assert hidden(str(caught.value))
    unquoted = f"{base} password=Wr0ng Guess9 {options}"  # libpq: missing "=" after "Guess9"
    with pytest.raises(JournalError, match="cannot be read") as caught:
        open_journal(unquoted)
    assert hidden(str(caught.value))
    assert hidden(str(caught.value.path))

    for url in (good, wrong, unquoted):
        done = cli("jobs", "--journal", url)
        assert (done.returncode == 0) is (url == good), done.stderr
        assert hidden(done.stdout + done.stderr)
    assert "r-keywords" in cli("jobs", "--journal", good).stdout


async def test_pgpassword_and_pgpass(
    postgres: Cluster,
    odd_role: tuple[str, str],
    schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
) -> None:
    """A password from PGPASSWORD or a .pgpass file, right or wrong: used, and never in an
    error, a log line or `jobs` output."""
    role, db = odd_role
    url = f"postgresql://{role}@127.0.0.1:{postgres.port}/{db}?options=-csearch_path%3D{schema}"
    shown = f"postgresql://{role}@127.0.0.1:{postgres.port}/{db}"
    for password, works in ((ODD, True), (WRONG, False)):
        env = {"PGPASSWORD": password}
        monkeypatch.setenv("PGPASSWORD", password)
        if works:
            await check_journal(url, shown, job="r-env")
        else:
            with pytest.raises(JournalError, match="user and password") as caught:
                await PostgresJournal(url).open()
            assert hidden(str(caught.value))
        done = cli("jobs", "--journal", url, env=env)
        assert (done.returncode == 0) is works, done.stderr
        assert hidden(done.stdout + done.stderr)
    monkeypatch.delenv("PGPASSWORD")

    url = url.replace(schema, postgres.new_schema(role, db))  # empty again
    pgpass = tmp_path / "pgpass"
    for password, works in ((ODD, True), (WRONG, False)):
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        pgpass.write_text(f"127.0.0.1:{postgres.port}:{db}:{role}:{escaped}\n")
        pgpass.chmod(0o600)
        env = {"PGPASSFILE": str(pgpass)}
        monkeypatch.setenv("PGPASSFILE", str(pgpass))
        if works:
            await check_journal(url, shown, job="r-pgpass")
        else:
            with pytest.raises(JournalError) as caught:
                await PostgresJournal(url).open()
            assert hidden(str(caught.value))
        done = cli("jobs", "--journal", url, env=env)
        assert (done.returncode == 0) is works, done.stderr
        assert hidden(done.stdout + done.stderr)
