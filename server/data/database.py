"""Database connections: MySQL through a DBUtils pool of pymysql connections, or the embedded
SQLite file. Both hand out DB-API cursors with `cursor(deadline)`; the SQL is in repository.py."""
from __future__ import annotations

import functools
import sqlite3
import ssl
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pymysql
from dbutils.pooled_db import PooledDB

from ..config import DatabaseSettings
from ..deadline import Deadline
from ..errors import DeadlineExceeded, Unavailable


class MySQLDatabase:
    """MySQL/MariaDB through a DBUtils pool (PooledDB) of pymysql connections.

    The pool has a fixed size: `pool_max_connections` connections, opened by `warm_up` once the
    server answers and kept, so no call waits on a connect under the pool's lock (DBUtils opens a
    missing connection while holding it). Its own wait for a free connection has no timeout:
    the admission in front of it (a semaphore of the same size, taken within the call's deadline)
    lets in only as many calls as there are connections, so DBUtils never waits.

    Nothing is sent but the statements: no ping when a connection is taken, no rollback when it is
    given back (autocommit), the session statement once per connection. Every wait is bounded by
    the call's deadline: for a slot, for a connection's set-up and for every reply. A connection
    found closed is reopened when the next call takes a cursor on it; one that died in the pool
    unnoticed is replaced by DBUtils' failover when the call's first statement is a read (a write
    is not retried: it may have been applied), and a statement that timed out is never retried.
    """
    backend = "mysql"
    placeholder = "%s"

    def __init__(self, settings: DatabaseSettings, session: str | None = None):
        params = settings.mysql_params()
        self._params = dict(host=params["host"], port=params["port"], user=params["user"],
                            password=params["password"], database=params["database"],
                            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                            write_timeout=settings.write_timeout, autocommit=settings.autocommit, charset="utf8mb4",
                            init_command=session)  # by the driver on every connect, a reopen included
        self.read_timeout = settings.read_timeout
        self._ping_on_take = bool(settings.pool_ping)
        self.blocking = settings.pool_blocking
        self._size = settings.pool_max_connections
        self._slots = threading.BoundedSemaphore(self._size)  # the admission: calls holding a connection
        self._local = threading.local()  # the deadline of the call a new connection is opened for
        # No maxconnections: the admission bounds the connections lent out. No ping: `_revive`
        # checks outside the pool's lock, and its errors reach the caller (DBUtils' reconnect
        # after a ping swallows them).
        self._pool = PooledDB(creator=self._open, maxcached=self._size, reset=not settings.autocommit,
                              ping=0, isfatal=_connection_lost)
        self._pool._idle_cache = _MostRecentFirst()
        self._lock = threading.Lock()  # guards _in_use
        self._in_use = 0
        self._probe: pymysql.connections.Connection | None = None
        self._probe_lock = threading.Lock()

    def _open(self) -> pymysql.connections.Connection:
        """A new connection (DBUtils' creator), its set-up bounded by the deadline of the call it
        is opened for."""
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        params = dict(self._params)
        sooner_than = False
        if deadline is not None:
            sooner_than = deadline.sooner_than(self.read_timeout)
            params["connect_timeout"] = deadline.io_timeout(params["connect_timeout"])
            params["read_timeout"] = deadline.io_timeout(params["read_timeout"])
        try:
            return _connect(params)
        except pymysql.err.OperationalError as exc:
            if sooner_than and _timed_out(exc):
                raise DeadlineExceeded("deadline exceeded connecting to the database") from exc
            raise

    def warm_up(self) -> None:
        """Fill the pool: open its connections now (once the server answers)."""
        with self._lock:
            missing = self._size - len(self._pool._idle_cache) - self._in_use
        held = [self._pool.dedicated_connection() for _ in range(missing)]
        for connection in held:
            connection.close()  # into the pool

    def ping(self, timeout: float) -> None:
        """Is the server answering within `timeout`? On a connection of its own (COM_PING, no SQL),
        so a probe never waits behind the calls holding the pool's connections."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = _connect({**self._params, "connect_timeout": timeout, "read_timeout": timeout,
                                        "write_timeout": timeout})
            self._probe._read_timeout = self._probe._write_timeout = timeout
            try:
                self._probe.ping(reconnect=False)
            except Exception:
                _close_quietly(self._probe)
                self._probe = None
                raise

    @staticmethod
    def is_failure(exc: BaseException) -> bool:
        """Errors that say the database itself is unwell (they count against the breaker)."""
        return isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError))

    @contextmanager
    def cursor(self, deadline: Deadline | None = None) -> Iterator:
        """A cursor on a pooled connection, every wait bounded by `deadline` (None: by the
        configured timeouts alone, for work outside calls such as migrations and seeding)."""
        wait = (deadline or Deadline.after(self.read_timeout)).left() if self.blocking else None
        if not self._slots.acquire(blocking=self.blocking, timeout=wait):
            if self.blocking and deadline is not None and deadline.expired():
                raise DeadlineExceeded("deadline exceeded waiting for a database connection")
            raise Unavailable("database connection pool exhausted: every connection is in use")
        self._local.deadline = deadline
        # pymysql applies _read_timeout to every packet read: a stalled server frees the worker
        # at the deadline (a time-out then is the deadline's).
        bounded = deadline is not None and deadline.sooner_than(self.read_timeout)
        with self._lock:
            self._in_use += 1
        try:
            connection = self._pool.dedicated_connection()  # never waits: the admission let us in
            try:
                raw = connection.dbapi_connection
                if deadline is not None:
                    deadline.check("waiting for the database")
                    raw._read_timeout = deadline.io_timeout(self.read_timeout)
                self._revive(raw, deadline)
                cursor = _Cursor(connection.cursor())
                try:
                    yield cursor
                finally:
                    cursor.close()
            finally:  # failover may have put a new pymysql connection under it
                connection.dbapi_connection._read_timeout = self.read_timeout
                connection.close()  # back to the pool
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
            if deadline is not None and (deadline.expired() or bounded and _timed_out(exc)):
                raise DeadlineExceeded("deadline exceeded waiting for the database") from exc
            raise
        finally:
            self._local.deadline = None
            with self._lock:
                self._in_use -= 1
            self._slots.release()

    def _revive(self, connection: pymysql.connections.Connection, deadline: Deadline | None) -> None:
        """Reopen a pooled connection the driver saw close (a failed call before), or with
        pool_ping one that does not answer a ping, within the call's deadline."""
        if self._ping_on_take and connection.open:
            try:
                connection.ping()
            except pymysql.err.MySQLError:
                _close_quietly(connection)
        if not connection.open:
            timeout = self._params["connect_timeout"]
            connection.connect_timeout = deadline.io_timeout(timeout) if deadline is not None else timeout
            connection.connect()

    def pool_status(self) -> tuple[int, int]:
        """(connections lent out, idle connections in the pool)."""
        with self._lock:
            return self._in_use, len(self._pool._idle_cache)

    def close(self) -> None:
        self._pool.close()
        with self._probe_lock:
            if self._probe is not None:
                _close_quietly(self._probe)
                self._probe = None


class _Cursor:
    """A DBUtils cursor that lets DBUtils fail over (a new connection, the statement again) only
    for the call's first statement, and only when it is a read: a write may have been applied, and
    a later statement would run on the new connection outside the call's transaction."""

    def __init__(self, cursor):
        self._cursor = cursor
        self._first = True

    def execute(self, query: str, args=None):
        first, self._first = self._first, False
        if first and query.lstrip()[:6].upper() == "SELECT":
            return self._cursor.execute(query, args)
        with self._cursor.no_failover():
            return self._cursor.execute(query, args)

    def executemany(self, query: str, args):
        self._first = False
        with self._cursor.no_failover():
            return self._cursor.executemany(query, args)

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    @property
    def description(self):
        return self._cursor.description

    def close(self) -> None:
        self._cursor.close()


class _MostRecentFirst(list):
    """PooledDB's idle connections, handed out most recently used first. DBUtils takes the longest
    idle (pop(0)): under light load every call would then wake a different server thread with cold
    caches (twice the single-caller latency over 32 connections, measured)."""

    def pop(self, index: int = -1):
        return super().pop()


def _connect(params: dict) -> pymysql.connections.Connection:
    """pymysql.connect (so the driver's tracing sees it) as pymysql connects given no TLS settings:
    TLS when the server offers it, its certificate unchecked, plain otherwise; but with one TLS
    context for every connection. pymysql builds one per connect, loading the system's CA bundle
    each time: about 20 ms of CPU, most of a connect."""
    connection = pymysql.connect(**params, ssl_disabled=True, defer_connect=True)
    connection.ssl, connection._ssl_required, connection.ctx = True, False, _offered_tls()
    connection.connect()
    return connection


@functools.cache
def _offered_tls() -> ssl.SSLContext:
    """The context pymysql builds when TLS is only offered (pymysql.connections._create_ssl_ctx
    without a CA): no certificate or host name check."""
    context = ssl.create_default_context()
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc)


def _connection_lost(exc: BaseException) -> bool:
    """The connection was closed under us (server restart, idle timeout), not a slow server:
    DBUtils' failover applies (a timed-out statement is not retried)."""
    code = exc.args[0] if exc.args else None
    return not _timed_out(exc) and (isinstance(exc, pymysql.err.InterfaceError) or code in (2006, 2013))


def _close_quietly(connection) -> None:
    try:
        connection.close()
    except Exception:  # already broken: nothing to say goodbye to
        pass


class SQLiteDatabase:
    """The embedded default: one SQLite file, one connection per thread (WAL allows readers
    alongside a writer)."""
    backend = "sqlite"
    placeholder = "?"

    def __init__(self, settings: DatabaseSettings):
        self.path = Path(settings.sqlite_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = settings.read_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._in_use = 0

    def warm_up(self) -> None:
        self._connection()

    def ping(self, timeout: float) -> None:
        """The file opens and answers (an embedded database has no server to stall)."""
        self._connection().execute("SELECT 1").fetchall()

    @staticmethod
    def is_failure(exc: BaseException) -> bool:
        return isinstance(exc, (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)) and \
            not isinstance(exc, sqlite3.IntegrityError)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    @contextmanager
    def cursor(self, deadline: Deadline | None = None) -> Iterator:
        cursor = self._connection().cursor()
        with self._lock:
            self._in_use += 1
        try:
            yield cursor
        finally:
            with self._lock:
                self._in_use -= 1
            cursor.close()

    def pool_status(self) -> tuple[int, int]:
        with self._lock:
            return self._in_use, len(self._all) - self._in_use

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()


def open_database(settings: DatabaseSettings, session: str | None = None) -> MySQLDatabase | SQLiteDatabase:
    """`session`: a statement run on each new MySQL connection."""
    return MySQLDatabase(settings, session) if settings.backend == "mysql" else SQLiteDatabase(settings)
