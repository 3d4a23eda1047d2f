"""A PostgreSQL database as a journal: its URL, recognising it, migrating it, and running
statements on it (sync and async).

A journal is recognised by its ``meta`` table (``application`` = ``siliconflow-video
journal``) and versioned by its ``schema_version`` row. All pending migrations run in one
transaction that first takes a transaction-level advisory lock, so a crash mid-migration
leaves the old schema (PostgreSQL's DDL is transactional) and two processes opening a
fresh database at once migrate it once: the second waits for the lock, then finds the
schema current. Tables of the same names that are not ours are reported
(``JournalForeignError``), never altered; other tables in the database are none of ours.

The password (from the URL, ``PGPASSWORD`` or ``.pgpass``, which libpq reads itself)
never leaves this module: the journal is named ``postgresql://user@host:port/db``, and
every error text is scrubbed of it. psycopg's exceptions are not chained to ours.
"""

from __future__ import annotations

import functools
import getpass
import os
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import attrs

from .._exceptions import (
    JournalBusyError,
    JournalConnectionError,
    JournalCorruptError,
    JournalError,
    JournalForeignError,
    JournalPathError,
    JournalReadOnlyError,
    JournalUnavailableError,
    JournalVersionError,
)
from .._version import __version__
from ._schema import APPLICATION
from ._sql import Abandon, Q, Step, Tx

__all__ = [
    "PG_SCHEMA_VERSION",
    "Lost",
    "Target",
    "connect_error",
    "connect_sync",
    "execute_sync",
    "is_keywords",
    "is_lost",
    "lost_at_open",
    "parse_url",
    "pg_statement",
    "prepare",
    "shown_url",
    "translate",
]

#: PG_MIGRATIONS[n] takes a journal from version n - 1 to n. Never edit a released one.
#: The tables, columns and states are SQLite's (the same records); times are seconds since
#: the epoch in both, and ``seq`` stands in for SQLite's rowid (the order of insertion).
PG_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE jobs (
        job_key        TEXT PRIMARY KEY,
        seq            BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        request_id     TEXT UNIQUE,
        state          TEXT NOT NULL CHECK (state IN ('submitting', 'submit_unknown',
                           'waiting', 'downloading', 'done', 'failed')),
        dest           TEXT NOT NULL,
        model          TEXT,
        payload_json   TEXT,
        submit_key     TEXT UNIQUE,
        remote_status  TEXT,
        remote_reason  TEXT,
        error_type     TEXT,
        error_message  TEXT,
        poll_count     BIGINT NOT NULL DEFAULT 0,
        inference_s    DOUBLE PRECISION,
        created_at     DOUBLE PRECISION NOT NULL,
        submitted_at   DOUBLE PRECISION,
        updated_at     DOUBLE PRECISION NOT NULL,
        last_polled_at DOUBLE PRECISION,
        finished_at    DOUBLE PRECISION,
        -- Only a job whose POST has not been answered may lack a requestId.
        CHECK (request_id IS NOT NULL OR state IN ('submitting', 'submit_unknown', 'failed'))
    );
    CREATE INDEX jobs_unfinished ON jobs (state) WHERE state NOT IN ('done', 'failed');
    CREATE INDEX jobs_order ON jobs (created_at, seq);

    CREATE TABLE videos (
        job_key       TEXT NOT NULL REFERENCES jobs (job_key) ON DELETE CASCADE,
        idx           INTEGER NOT NULL CHECK (idx >= 0),
        state         TEXT NOT NULL CHECK (state IN ('pending', 'downloading', 'done',
                          'failed')),
        url           TEXT,
        url_seen_at   DOUBLE PRECISION,
        size          BIGINT,
        etag          TEXT,
        last_modified TEXT,
        bytes_done    BIGINT NOT NULL DEFAULT 0,
        path          TEXT,
        sha256        TEXT,
        error_type    TEXT,
        error_message TEXT,
        updated_at    DOUBLE PRECISION NOT NULL,
        finished_at   DOUBLE PRECISION,
        PRIMARY KEY (job_key, idx),
        CHECK (state != 'done' OR path IS NOT NULL)
    );

    -- One row per open journal that holds (or held) leases: how to tell it is gone.
    CREATE TABLE owners (
        owner      TEXT PRIMARY KEY,
        host       TEXT NOT NULL,
        machine    TEXT,
        pid        BIGINT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        seen_at    DOUBLE PRECISION NOT NULL
    );

    -- idx -1 is the job itself; 0.. its videos.
    CREATE TABLE leases (
        job_key    TEXT NOT NULL REFERENCES jobs (job_key) ON DELETE CASCADE,
        idx        INTEGER NOT NULL CHECK (idx >= -1),
        owner      TEXT NOT NULL,
        until      DOUBLE PRECISION NOT NULL,
        claimed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_key, idx)
    );
    CREATE INDEX leases_owner ON leases (owner);
    """,
}

PG_SCHEMA_VERSION = max(PG_MIGRATIONS)

_TABLES = ("meta", "jobs", "videos", "owners", "leases")
#: The advisory lock that serialises migrations (any constant; per database).
_MIGRATION_LOCK = 0x53465653


class Lost(Abandon):
    """The connection to PostgreSQL is gone (the server restarted, the network broke)."""


# -- the URL ---------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """Where the journal is: what libpq is given, and the name shown for it."""

    conninfo: str = attrs.field(repr=False)
    shown: str
    secrets: tuple[str, ...] = attrs.field(repr=False, default=())

    def scrub(self, text: str) -> str:
        """``text`` without any password libpq might have been given (longest first, so
        that a password holding a shorter one goes whole)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        text = _KEYWORD_PASSWORD.sub(r"\1***", text)
        return _URL_PASSWORD.sub(r"\1***@", text)


_SCHEMES = ("postgresql://", "postgres://")
#: libpq settings given unless the URL sets them: a connection whose server or path is gone
#: without a word (a failover, a NAT that forgot an idle connection, a cable) is found dead
#: within about a minute, idle or mid-write, instead of after the system's defaults (two
#: hours idle; some fifteen minutes of retransmissions), so that the reconnect and
#: ``reconnect_timeout`` apply to it as to a refused one.
_KEEPALIVE = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",  # ms: sent data unacknowledged this long ends the link
}
#: A URL's password as an error text might hold one: up to the last '@' of a word.
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)\S*@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)")
#: What follows a URL's user and password: hosts and a database with no '@' in them, and
#: a query of key=value pairs (where an '@' may appear, in a file name).
_AFTER_USERINFO = re.compile(r"[^/?#@]*(?:/[^?#@]*)?(?:\?[^=&#]+=[^&#]*(?:&[^=&#]+=[^&#]*)*)?")
#: The keywords of a libpq connection string (``host=... dbname=...``), and a value.
_KEYWORD = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
#: What a libpq connection string starts with (any of its usual keywords).
_FIRST_KEYWORD = re.compile(
    r"\s*(host|hostaddr|port|dbname|user|password|passfile|service|sslmode|options|"
    r"application_name|connect_timeout|target_session_attrs)\s*="
)


def is_keywords(text: str) -> bool:
    """Whether ``text`` is a libpq connection string of keywords (``host=h dbname=d``)."""
    return bool(_FIRST_KEYWORD.match(text))


def _split_url(url: str) -> tuple[str, str | None, str] | None:
    """A ``postgresql://`` URL as (scheme, its user and password as written, the rest);
    None if ``url`` is no such URL.

    libpq ends the user and password at the first '@' met before any '/'. That reading is
    kept unless it leaves an '@' in the hosts or the database, as a password with an
    unencoded '@' or '/' does (``bob:p@ss@host``): then they end at the first '@' after
    which the URL reads as hosts and a database with none (as Python's urllib and asyncpg
    read such a URL), and no piece of the password becomes a host name shown in errors.
    """
    scheme = next((s for s in _SCHEMES if url.startswith(s)), None)
    if scheme is None:
        return None
    rest = url[len(scheme) :]
    end = re.search(r"[@/]", rest)
    userinfo = rest[: end.start()] if end is not None and end.group() == "@" else None
    after = rest if userinfo is None else rest[len(userinfo) + 1 :]
    if "@" not in after.split("?", 1)[0]:
        return scheme, userinfo, after
    for at, char in enumerate(rest):
        if char == "@" and _AFTER_USERINFO.fullmatch(rest, at + 1):
            return scheme, rest[:at], rest[at + 1 :]
    return scheme, None, rest


def _keywords(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in _KEYWORD.findall(text):
        if value.startswith("'") and value.endswith("'") and len(value) > 1:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key] = value
    return values


def _name(params: dict[str, Any]) -> str:
    """``postgresql://user@host:port/db``, libpq's defaults filled in as it does."""
    user = str(params.get("user") or os.environ.get("PGUSER") or getpass.getuser())
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    db = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return f"postgresql://{user}@{host}:{port}/{db}"


def shown_url(url: str) -> str:
    """A PostgreSQL URL (or connection string) as shown to a person: no password, no
    query. A URL that cannot be read shows nothing before its last '@'."""
    if is_keywords(url):
        return _name(_keywords(url))
    text = "postgresql://" + url.split("://", 1)[-1] if url.startswith("postgresql+") else url
    split = _split_url(text)
    if split is None:
        return url.rsplit("@", 1)[-1].split("?", 1)[0]
    scheme, userinfo, rest = split
    if userinfo is None:
        # Unreadable if an '@' is left: whatever is before it may be secret.
        return scheme + "...@" + rest.rsplit("@", 1)[-1] if "@" in rest else url.split("?")[0]
    user = urllib.parse.quote(urllib.parse.unquote(userinfo.partition(":")[0]), safe="")
    return f"{scheme}{user}@{rest.split('?', 1)[0]}"


def parse_url(url: str) -> Target:
    """The ``Target`` of a ``postgresql://`` (or ``postgres://``) URL, or of a libpq
    connection string (``host=H port=P user=U password=W dbname=D``)."""
    text = url
    if text.startswith("postgresql+"):  # as SQLAlchemy spells a driver: postgresql+psycopg://
        text = "postgresql://" + text.split("://", 1)[-1]
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
    except ImportError:
        raise JournalUnavailableError(
            "a PostgreSQL journal needs psycopg: pip install 'siliconflow-video[postgres]'",
            path=shown_url(url),
        ) from None
    secrets: list[str] = []
    scheme, userinfo, rest = _split_url(text) or ("", None, "")
    if userinfo is not None:
        user, colon, written = userinfo.partition(":")
        password = urllib.parse.unquote(written)
        secrets += [written, password, urllib.parse.quote(password, safe="")]
        # Given to libpq encoded, so that it reads the user and password meant.
        text = f"{scheme}{urllib.parse.quote(urllib.parse.unquote(user), safe='')}"
        text += f":{urllib.parse.quote(password, safe='')}@{rest}" if colon else f"@{rest}"
    try:
        params = conninfo_to_dict(text)
    except psycopg.Error:  # its text may quote the password: not passed on
        form = "connection string" if is_keywords(url) else "URL"
        raise JournalUnavailableError(
            f"{shown_url(url)!r}: this PostgreSQL {form} cannot be read; write "
            "postgresql://USER[:PASSWORD]@HOST:PORT/DB (percent-encode any '@', ':', '/' "
            "or '%' in the user or password, as %40 %3A %2F %25)",
            path=shown_url(url),
        ) from None
    secrets += [
        s for s in (params.get("password"), os.environ.get("PGPASSWORD")) if isinstance(s, str)
    ]
    shown, kept = _name(params), tuple(s for s in set(secrets) if s)
    if "service" not in params:  # a service file's own settings are left to it
        try:  # libpq ignores them on a Unix socket; one older than 12 refuses the last
            return Target(make_conninfo("", **{**_KEEPALIVE, **params}), shown, kept)
        except psycopg.Error:
            pass
    return Target(make_conninfo("", **params), shown, kept)


# -- errors ------------------------------------------------------------------------------------

#: SQLSTATEs of a change that met another transaction's locks: trying again may work.
_BUSY = frozenset({"40P01", "40001", "55P03"})


def translate(exc: Exception, target: Target) -> JournalError:
    """The typed error for a psycopg failure on the journal at ``target``."""
    state = str(getattr(exc, "sqlstate", None) or "")
    # One line (libpq's messages hold newlines and tabs), without any password.
    text = " ".join(target.scrub(str(exc)).split()) or type(exc).__name__
    where = f"journal {target.shown!r}"
    path = target.shown
    if state in _BUSY:
        return JournalBusyError(
            f"{where}: another process held the rows this change needed ({text}); "
            "nothing was changed, try again",
            path=path,
        )
    if state == "25006":
        return JournalReadOnlyError(f"{where} is read-only here ({text})", path=path)
    if state == "42501":
        return JournalReadOnlyError(
            f"{where}: permission denied ({text}); grant the journal's role the right to "
            "create tables (first open) and to write its tables",
            path=path,
        )
    if state == "3D000":
        return JournalPathError(
            f"{where}: there is no such database ({text}); create it first", path=path
        )
    if state.startswith("53"):
        return JournalError(
            f"{where}: the server is out of resources (disk, memory or connections: "
            f"{text}); the last change was not made",
            path=path,
        )
    suffix = f" [SQLSTATE {state}]" if state else ""
    return JournalError(f"{where}: {text}{suffix}", path=path)


def connect_error(exc: Exception, target: Target) -> JournalError:
    """The typed error for a failed connection attempt: the server out of reach
    (``JournalConnectionError``), or refusing the user or password."""
    error = translate(exc, target)
    if type(error) is not JournalError:
        return error
    text = str(exc)
    if "authentication" in text or "password" in text:  # libpq's words; it gives no SQLSTATE
        return JournalError(
            f"cannot connect to the journal: {error}; are the user and password right?",
            path=error.path,
        )
    hint = "" if "Is the server running" in text else "; is PostgreSQL running there?"
    return JournalConnectionError(f"cannot connect to the journal: {error}{hint}", path=error.path)


def lost_at_open(lost: Lost, target: Target) -> JournalConnectionError:
    """The error for a connection lost while the journal was being opened (or read)."""
    return JournalConnectionError(
        f"journal {target.shown!r}: the connection to PostgreSQL was lost ({lost}); try again",
        path=target.shown,
    )


def is_lost(exc: Exception, broken: bool) -> bool:
    """Whether ``exc`` means the connection is gone (as opposed to one statement failing)."""
    state = str(getattr(exc, "sqlstate", None) or "")
    return broken or state.startswith(("08", "57P"))


# -- statements ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def pg_statement(query: Q) -> tuple[str, Sequence[Any] | None]:
    """The statement as psycopg takes it: ``%s`` placeholders; a script with no
    parameters as is (several statements may then go in one)."""
    if not query.params:
        return query.sql, None
    return _placeholders(query.sql), query.params


def connect_sync(target: Target) -> Any:
    """A psycopg (sync) connection for reading, opened read-only."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        conn = psycopg.connect(
            target.conninfo,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=10,
            application_name="siliconflow-video",
        )
    except psycopg.Error as exc:
        raise connect_error(exc, target) from None
    try:
        conn.execute("SET default_transaction_read_only = on")
    except psycopg.Error as exc:
        conn.close()
        raise translate(exc, target) from None
    return conn


def execute_sync(conn: Any, target: Target, query: Q) -> Any:
    """Run one statement of a step on a psycopg (sync) connection."""
    import psycopg
    from psycopg.pq import TransactionStatus

    if query.fetch == "status":
        return conn.info.transaction_status != TransactionStatus.IDLE
    if query.fetch == "pause":
        return None
    sql, params = pg_statement(query)
    try:
        if query.fetch == "many":
            with conn.cursor() as cursor:
                cursor.executemany(sql, params or ())
            return None
        cursor = conn.execute(sql, params)
        if query.fetch == "all":
            return cursor.fetchall()
        if query.fetch == "one":
            return cursor.fetchone()
        return cursor.rowcount
    except psycopg.Error as exc:
        if is_lost(exc, conn.broken or conn.closed):
            raise Lost(" ".join(target.scrub(str(exc)).split())) from None
        raise translate(exc, target) from None


# -- recognising and migrating ---------------------------------------------------------------


def recognise(tx: Tx) -> Step[int]:
    """The journal's schema version (0: none of our tables yet, ours to create)."""
    rows = yield tx.all(
        "SELECT c.relname AS name FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND c.relname IN (SELECT value FROM unnest(CAST(? AS text[])) AS each (value))",
        list(_TABLES),
    )
    found = sorted(row["name"] for row in rows)
    if not found:
        return 0
    meta: dict[str, str] = {}
    if "meta" in found:
        columns = yield tx.all(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('meta') "
            "AND attnum > 0 AND NOT attisdropped"
        )
        if {"key", "value"} <= {row["attname"] for row in columns}:
            kept = yield tx.all(
                "SELECT CAST(key AS TEXT) AS key, CAST(value AS TEXT) AS value FROM meta "
                "WHERE CAST(key AS TEXT) IN ('application', 'schema_version')"
            )
            meta = {row["key"]: row["value"] for row in kept}
    if meta.get("application") != APPLICATION:
        raise JournalForeignError(
            f"{tx.path!r} already has tables named {', '.join(found)} of some other "
            "application; they are left untouched: give the journal its own database, or "
            "its own schema (?options=-csearch_path%3DNAME)",
            path=tx.path,
        )
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise JournalCorruptError(
            f"journal {tx.path!r} has no readable schema version in its meta table",
            path=tx.path,
        ) from None
    if version > PG_SCHEMA_VERSION:
        raise JournalVersionError(
            f"journal {tx.path!r} has schema version {version}, newer than this "
            f"siliconflow-video knows ({PG_SCHEMA_VERSION}); upgrade the package",
            path=tx.path,
            found=version,
            supported=PG_SCHEMA_VERSION,
        )
    return version


def prepare(tx: Tx, *, read_only: bool) -> Step[bool]:
    """Recognise the database, migrating it unless ``read_only``; whether it can be
    written (the role may only have been granted reads)."""
    version = yield from recognise(tx)
    if read_only:
        if version == 0:
            raise JournalPathError(f"{tx.path!r} holds no journal yet", path=tx.path)
        if version < PG_SCHEMA_VERSION:
            raise JournalReadOnlyError(
                f"journal {tx.path!r} has schema version {version} and needs migrating to "
                f"{PG_SCHEMA_VERSION}, which a read-only open cannot do; open it writable once",
                path=tx.path,
            )
        return False
    if version < PG_SCHEMA_VERSION:
        yield from _migrate(tx)
    row = yield tx.one(
        "SELECT has_table_privilege('jobs', 'INSERT, UPDATE') "
        "AND has_table_privilege('leases', 'INSERT, UPDATE, DELETE') AS writable"
    )
    return bool(row["writable"])


def _migrate(tx: Tx) -> Step[None]:
    yield Q("BEGIN")
    try:
        yield tx.one("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
        version = yield from recognise(tx)  # again, under the lock: another process may
        for target in range(version + 1, PG_SCHEMA_VERSION + 1):  # have migrated meanwhile
            yield Q(PG_MIGRATIONS[target])
            if target == 1:
                yield tx.many(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("created_by", _package_version())],
                )
            yield tx.run(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                str(target),
            )
        yield Q("COMMIT")
    except Exception:
        yield Q("ROLLBACK")
        raise


def _package_version() -> str:
    return f"siliconflow-video {__version__}"
