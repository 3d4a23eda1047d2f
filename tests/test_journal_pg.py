"""The PostgreSQL journal's own concerns, against a real server (tests/_postgres.py):
restarts, connections lost mid-batch, concurrent migrations, someone else's tables, a
newer schema, and the password kept out of everything shown. The behaviour it shares
with SQLite is tested in tests/test_journal.py, on both."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from siliconflow_video._exceptions import (
    JournalConnectionError,
    JournalError,
    JournalForeignError,
    JournalVersionError,
    LeaseHeldError,
)
from siliconflow_video._journal import JobState, open_journal, read_jobs
from siliconflow_video._journal import _postgres as pg_module
from siliconflow_video._journal._pgschema import Lost
from siliconflow_video._journal._postgres import PostgresJournal
from siliconflow_video._journal._sql import Q

from . import _postgres
from ._postgres import PASSWORD, Cluster

# The fixtures of a real PostgreSQL (tests/_postgres.py), used by name.
postgres, pg_database, pg_url = _postgres.postgres, _postgres.pg_database, _postgres.pg_url

SIGNED = "https://videos.example/out/a.mp4?Expires=1&Signature=SECRET-SIG"


def admin(url: str, sql: str) -> Any:
    """Run ``sql`` as the test's role, in the test's schema; the rows if any."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else None


async def test_a_server_restart_mid_run_is_survived(
    postgres: Cluster, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL restarted while writes stream in: every write acknowledged is there,
    every other one raised a JournalError, and the journal keeps working on its own."""
    caplog.set_level(logging.INFO, logger="siliconflow_video")
    acknowledged: list[str] = []
    refused: list[BaseException] = []
    async with PostgresJournal(pg_url, flush_interval=0.01, reconnect_timeout=30) as journal:
        await journal.accept(["held"], dest="/v")
        lease = await journal.claim("held")

        async def writer(name: str) -> None:
            for i in range(400):
                rid = f"{name}-{i}"
                try:
                    await journal.accept([rid], dest="/v")
                    journal.note_poll(rid, "InQueue")
                except JournalError as exc:
                    refused.append(exc)
                else:
                    acknowledged.append(rid)
                await asyncio.sleep(0.002)

        writers = [asyncio.create_task(writer(f"w{n}")) for n in range(4)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(postgres.restart)
        await asyncio.gather(*writers)
        (after,) = await journal.accept(["after-restart"], dest="/v")
        assert after.state is JobState.WAITING
        assert (await journal.renew(lease)).owner == journal.owner  # leases are rows: kept
        async with PostgresJournal(pg_url) as other:
            with pytest.raises(LeaseHeldError):
                await other.claim("held")
        stored = {job.job_key for job in await journal.jobs()}
    assert set(acknowledged) <= stored
    assert len(acknowledged) + len(refused) == 1600
    assert len(refused) < 10, refused  # only writes whose COMMIT was in flight may fail
    assert any("connection was lost" in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_write_is_retried_only_if_it_surely_did_not_commit(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost before COMMIT is sent: the write is made again on a new
    connection. Lost while COMMIT is in flight: the caller gets a JournalError, never a
    silent success or a silent second write."""
    real = pg_module.execute
    fail_on: list[str] = []

    async def flaky(conn: Any, target: Any, query: Q) -> Any:
        if fail_on and query.sql.startswith(fail_on[0]):
            fail_on.pop()
            await conn.close()  # the server side of it ends too
            raise Lost("server closed the connection unexpectedly")
        return await real(conn, target, query)

    monkeypatch.setattr(pg_module, "execute", flaky)
    async with PostgresJournal(pg_url, flush_interval=0.01) as journal:
        fail_on.append("INSERT INTO jobs")
        (job,) = await journal.accept(["r1"], dest="/v")
        assert job.state is JobState.WAITING
        fail_on.append("COMMIT")
        with pytest.raises(JournalError, match="may or may not be recorded"):
            await journal.accept(["r2"], dest="/v")
        assert [j.job_key for j in await journal.jobs()] == ["r1"]  # (this one did not)
        (again,) = await journal.accept(["r2"], dest="/v")
        assert again.state is JobState.WAITING
        assert PASSWORD not in repr(journal)


async def test_a_server_that_stays_down_is_a_typed_error_after_the_deadline(
    postgres: Cluster, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL stopped for longer than reconnect_timeout: each write raises
    JournalConnectionError ("not made"), and once the server is back the same journal
    goes on with every write acknowledged before, and none of the refused ones."""
    caplog.set_level(logging.DEBUG, logger="siliconflow_video")
    async with PostgresJournal(
        pg_url, flush_interval=0.01, reconnect_timeout=1, connect_timeout=1
    ) as journal:
        await journal.accept(["before"], dest="/v")
        await asyncio.to_thread(postgres.stop)
        try:
            for rid in ("during-1", "during-2"):  # the second: past the deadline already
                with pytest.raises(JournalConnectionError) as caught:
                    await journal.accept([rid], dest="/v")
                assert isinstance(caught.value, ConnectionError)
                assert "this change was not made" in str(caught.value)
                assert PASSWORD not in str(caught.value)
        finally:
            await asyncio.to_thread(postgres.start)
        (after,) = await journal.accept(["after"], dest="/v")
        assert after.state is JobState.WAITING
        assert sorted(j.job_key for j in await journal.jobs()) == ["after", "before"]
    assert sorted(j.job_key for j in read_jobs(pg_url)) == ["after", "before"]
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_connection_lost_again_and_again_is_not_retried_forever(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that takes every new connection and drops it mid-batch: the write ends
    in JournalConnectionError once reconnect_timeout has passed (reconnects that succeed
    do not start the count anew), and the journal works once the server behaves."""
    real = pg_module.execute
    dropping = True

    async def dropped(conn: Any, target: Any, query: Q) -> Any:
        if dropping and query.sql.startswith("INSERT INTO jobs"):
            await conn.close()
            raise Lost("server closed the connection unexpectedly")
        return await real(conn, target, query)

    monkeypatch.setattr(pg_module, "execute", dropped)
    async with PostgresJournal(pg_url, flush_interval=0.01, reconnect_timeout=0.5) as journal:
        with pytest.raises(JournalConnectionError, match="lost again"):
            await journal.accept(["r1"], dest="/v")
        dropping = False
        (job,) = await journal.accept(["r2"], dest="/v")
        assert job.state is JobState.WAITING
        assert [j.job_key for j in await journal.jobs()] == ["r2"]


async def test_a_server_out_of_reach_at_open_is_a_connection_error(
    postgres: Cluster, pg_database: tuple[str, str]
) -> None:
    """Nothing listening at the URL: JournalConnectionError at open; a wrong password is
    a plain JournalError that names the user and password as the suspects."""
    role, db = pg_database
    closed = f"postgresql://{role}:{PASSWORD}@127.0.0.1:{_postgres.free_port()}/{db}"
    with pytest.raises(JournalConnectionError, match="Is the server running") as caught:
        await PostgresJournal(closed, connect_timeout=2).open()
    assert "\n" not in str(caught.value)  # one line, as libpq's two are joined
    with pytest.raises(JournalConnectionError):
        read_jobs(closed)
    wrong = postgres.url(role, db).replace(PASSWORD, "not-the-password")
    with pytest.raises(JournalError, match="user and password") as caught:
        await PostgresJournal(wrong).open()
    assert not isinstance(caught.value, JournalConnectionError)
    assert "not-the-password" not in str(caught.value)


async def test_a_connection_lost_while_opening_is_a_connection_error(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server gone while the journal is being opened or read: a JournalConnectionError
    (never the internal "connection lost" signal), and the next open works."""
    from siliconflow_video._journal import _pgschema

    real, real_sync = pg_module.execute, _pgschema.execute_sync
    losing = True

    async def lost(conn: Any, target: Any, query: Q) -> Any:
        if losing:
            raise Lost("server closed the connection unexpectedly")
        return await real(conn, target, query)

    def lost_sync(conn: Any, target: Any, query: Q) -> Any:
        if losing:
            raise Lost("server closed the connection unexpectedly")
        return real_sync(conn, target, query)

    monkeypatch.setattr(pg_module, "execute", lost)
    monkeypatch.setattr(_pgschema, "execute_sync", lost_sync)
    with pytest.raises(JournalConnectionError, match="was lost"):
        await PostgresJournal(pg_url).open()
    with pytest.raises(JournalConnectionError, match="was lost"):
        read_jobs(pg_url)
    losing = False
    async with PostgresJournal(pg_url) as journal:
        await journal.accept(["r1"], dest="/v")
    assert [j.job_key for j in read_jobs(pg_url)] == ["r1"]


MIGRATOR = textwrap.dedent(
    """
    import asyncio, sys
    from siliconflow_video._journal import open_journal

    async def main():
        sys.stdin.readline()  # all start together
        async with open_journal(sys.argv[1]) as journal:
            await journal.accept([sys.argv[2]], dest="/v")

    asyncio.run(main())
    """
)


def test_two_processes_migrate_a_fresh_database_at_once(pg_url: str) -> None:
    """Processes opening one fresh database at the same moment create its schema once,
    and all of them work on it."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, pg_url, f"r{n}"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert sorted(j.job_key for j in read_jobs(pg_url)) == ["r0", "r1", "r2", "r3"]
    meta = dict(admin(pg_url, "SELECT key, value FROM meta"))
    assert meta["schema_version"] == "1"
    assert meta["application"] == "siliconflow-video journal"


async def test_someone_elses_tables_are_left_alone(pg_url: str) -> None:
    """A database whose ``jobs`` table belongs to another application raises
    JournalForeignError, and nothing is created or changed in it."""
    admin(pg_url, "CREATE TABLE jobs (id serial PRIMARY KEY, what text)")
    admin(pg_url, "INSERT INTO jobs (what) VALUES ('payroll')")
    with pytest.raises(JournalForeignError) as caught:
        await PostgresJournal(pg_url).open()
    assert "jobs" in str(caught.value)
    with pytest.raises(JournalForeignError):
        read_jobs(pg_url)
    tables = admin(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    assert tables == [("jobs",)]
    assert admin(pg_url, "SELECT what FROM jobs") == [("payroll",)]


async def test_unrelated_tables_are_no_obstacle(pg_url: str) -> None:
    """Other tables in the same database (an application's own) do not stop the journal."""
    admin(pg_url, "CREATE TABLE invoices (id serial PRIMARY KEY)")
    async with PostgresJournal(pg_url) as journal:
        await journal.accept(["r1"], dest="/v")
    assert [j.job_key for j in read_jobs(pg_url)] == ["r1"]


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    """A journal written by a newer version raises JournalVersionError, untouched."""
    async with PostgresJournal(pg_url) as journal:
        await journal.accept(["r1"], dest="/v")
    admin(pg_url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(JournalVersionError) as caught:
        await PostgresJournal(pg_url).open()
    assert (caught.value.found, caught.value.supported) == (99, 1)
    with pytest.raises(JournalVersionError):
        read_jobs(pg_url)
    assert admin(pg_url, "SELECT job_key FROM jobs") == [("r1",)]


async def test_the_password_is_never_shown(
    postgres: Cluster,
    pg_database: tuple[str, str],
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the URL, PGPASSWORD or a .pgpass file, the password is used and appears in no
    repr, error message or ``path``: the journal is named postgresql://user@host:port/db."""
    role, db = pg_database
    shown = f"postgresql://{role}@127.0.0.1:{postgres.port}/{db}"
    journal = open_journal(pg_url)
    assert journal.path == shown if isinstance(journal, PostgresJournal) else False
    assert PASSWORD not in repr(journal)
    wrong = pg_url.replace(PASSWORD, PASSWORD + "-wrong")
    with pytest.raises(JournalError) as caught:
        await PostgresJournal(wrong).open()
    assert PASSWORD not in str(caught.value)
    assert caught.value.path == shown
    assert caught.value.__cause__ is None  # psycopg's own text is not chained along
    with pytest.raises(JournalError) as caught:
        read_jobs(wrong)
    assert PASSWORD not in str(caught.value)

    bare = pg_url.replace(f":{PASSWORD}@", "@")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    async with PostgresJournal(bare) as journal:
        await journal.accept(["r1"], dest="/v")
        with pytest.raises(JournalError) as caught:
            await journal.succeeded("nope", [SIGNED])
        assert PASSWORD not in str(caught.value)
    assert [j.job_key for j in read_jobs(bare)] == ["r1"]
    monkeypatch.delenv("PGPASSWORD")

    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:{db}:{role}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    async with PostgresJournal(bare) as journal:
        assert [j.job_key for j in await journal.jobs()] == ["r1"]
    assert os.environ.get("PGPASSWORD") is None


async def test_connections_are_kept_alive_unless_the_url_says_otherwise(pg_url: str) -> None:
    """Every connection made from a journal URL (the journal's, the workers' queue and rate
    budget) asks the kernel to probe an idle link and to give up on unacknowledged writes,
    so a server gone silent is found within about a minute; the URL's own values win."""
    from siliconflow_video._journal._pgschema import parse_url

    async with await psycopg.AsyncConnection.connect(parse_url(pg_url).conninfo) as conn:
        used = conn.info.get_parameters()
    assert used["keepalives_idle"] == "30"
    assert used["keepalives_count"] == "3"
    assert used["tcp_user_timeout"] == "60000"
    own = f"{pg_url}{'&' if '?' in pg_url else '?'}keepalives_idle=7"
    async with await psycopg.AsyncConnection.connect(parse_url(own).conninfo) as conn:
        assert conn.info.get_parameters()["keepalives_idle"] == "7"
    async with PostgresJournal(pg_url) as journal:  # libpq takes them: the journal opens
        await journal.accept(["r1"], dest="/v")


def test_a_service_name_keeps_its_own_settings() -> None:
    """A URL naming a pg_service.conf entry gets no keepalive defaults: the file's own
    settings would otherwise be overridden."""
    from siliconflow_video._journal._pgschema import parse_url

    assert "keepalives_idle" not in parse_url("postgresql:///?service=sfv").conninfo
    assert "keepalives_idle" in parse_url("postgresql://u@127.0.0.1:5432/db").conninfo
