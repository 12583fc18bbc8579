"""Database connections: MySQL through a DBUtils pool of pymysql connections, or the embedded
SQLite file. Both hand out DB-API cursors with `cursor(timeout)`; the SQL is in repository.py."""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pymysql
from dbutils.pooled_db import PooledDB, TooManyConnections

from ..config import DatabaseSettings
from ..errors import DeadlineExceeded, Unavailable


class MySQLDatabase:
    backend = "mysql"
    placeholder = "%s"

    def __init__(self, settings: DatabaseSettings):
        params = settings.mysql_params()
        self.blocking = settings.pool_blocking
        # DBUtils' own blocking wait has no timeout; this semaphore bounds the connections lent
        # out and lets a caller wait no longer than its deadline.
        limit = settings.pool_max_connections
        self._slots = threading.BoundedSemaphore(limit) if limit else None
        self._in_use = 0
        self._count_lock = threading.Lock()
        self._local = threading.local()  # deadline (monotonic) of the call opening a connection
        self._params = dict(host=params["host"], port=params["port"], user=params["user"],
                            password=params["password"], database=params["database"],
                            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                            write_timeout=settings.write_timeout, autocommit=settings.autocommit, charset="utf8mb4")
        # ping=0: no round trip on checkout. A connection found dead by a statement is replaced
        # and the statement retried once (DBUtils' failover, outside transactions; every statement
        # of the service is a read or an idempotent write), except when it timed out: the
        # deadline has passed and the database is slow, not gone.
        self.pool = PooledDB(
            creator=self._connect, mincached=0, maxcached=settings.pool_max_cached,
            maxconnections=limit, blocking=False, ping=settings.pool_ping,
            isfatal=lambda exc: not _timed_out(exc), **self._params)
        self._warm = settings.pool_min_cached
        self.read_timeout = settings.read_timeout
        self._probe: pymysql.connections.Connection | None = None
        self._probe_lock = threading.Lock()

    def _connect(self, **params) -> pymysql.connections.Connection:
        """A new connection whose set-up (TCP connect, then the handshake, which pymysql reads with
        read_timeout) waits no longer than the call opening it has left."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None:
            bound = max(deadline - time.monotonic(), 0.001)
            params["connect_timeout"] = min(params["connect_timeout"], bound)
            params["read_timeout"] = min(params["read_timeout"], bound)
        return pymysql.connect(**params)

    _connect.threadsafety = 1  # type: ignore[attr-defined]  # DBUtils asks the creator

    def warm_up(self) -> None:
        """Open pool_min_cached connections now (after the server is reachable)."""
        held = [self.pool.connection() for _ in range(self._warm)]
        for connection in held:
            connection.close()

    def ping(self, timeout: float) -> None:
        """Is the server answering within `timeout`? On a connection of its own (COM_PING, no SQL),
        so a probe never waits behind the calls holding the pool's connections."""
        with self._probe_lock:
            if self._probe is None:
                self._probe = pymysql.connect(**{**self._params, "connect_timeout": timeout, "read_timeout": timeout,
                                                 "write_timeout": timeout})
            self._probe._read_timeout = self._probe._write_timeout = timeout
            try:
                self._probe.ping(reconnect=False)
            except Exception:
                self._close_probe()
                raise

    def _close_probe(self) -> None:
        if self._probe is not None:
            try:
                self._probe.close()
            except Exception:  # already broken: nothing to say goodbye to
                pass
            self._probe = None

    @staticmethod
    def is_failure(exc: BaseException) -> bool:
        """Errors that say the database itself is unwell (they count against the breaker)."""
        return isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError))

    def _checkout(self, timeout: float | None):
        try:
            return self.pool.connection()
        except TooManyConnections:
            raise Unavailable("database connection pool exhausted: every connection is in use") from None
        except pymysql.err.OperationalError as exc:
            configured = max(self._params["connect_timeout"], self.read_timeout)
            if timeout is not None and timeout < configured and _timed_out(exc):
                raise DeadlineExceeded("deadline exceeded connecting to the database") from exc
            raise

    @contextmanager
    def cursor(self, timeout: float | None = None) -> Iterator:
        started = time.monotonic()
        if self._slots is not None:
            wait = None if timeout is None else max(0.0, timeout)
            if not self._slots.acquire(blocking=self.blocking, timeout=wait if self.blocking else None):
                raise Unavailable("database connection pool exhausted: every connection is in use")
        # Connections opened for this call (by the pool, or by failover) wait no longer than it has left.
        self._local.deadline = None if timeout is None else started + timeout
        try:
            connection = self._checkout(timeout)
            if timeout is not None:
                timeout -= time.monotonic() - started
                if timeout <= 0:
                    connection.close()
                    raise DeadlineExceeded("deadline exceeded connecting to the database")
            with self._count_lock:
                self._in_use += 1
            raw = _pymysql_connection(connection)
            # Wait for replies no longer than the call has left (pymysql applies _read_timeout to
            # every packet read), so a stalled database frees the worker at the deadline.
            bounded = raw is not None and timeout is not None and timeout < self.read_timeout
            if bounded:
                raw._read_timeout = max(timeout, 0.001)
            try:
                cursor = connection.cursor()
                try:
                    yield cursor
                finally:
                    cursor.close()
            except pymysql.err.OperationalError as exc:
                if bounded and _timed_out(exc):
                    raise DeadlineExceeded("deadline exceeded waiting for the database") from exc
                raise
            finally:
                raw = _pymysql_connection(connection)  # failover may have replaced it
                if raw is not None:
                    raw._read_timeout = self.read_timeout
                with self._count_lock:
                    self._in_use -= 1
                connection.close()  # back to the pool
        finally:
            self._local.deadline = None
            if self._slots is not None:
                self._slots.release()

    def pool_status(self) -> tuple[int, int]:
        """(connections lent out, idle connections cached)."""
        return self._in_use, len(getattr(self.pool, "_idle_cache", ()))

    def close(self) -> None:
        with self._probe_lock:
            self._close_probe()
        self.pool.close()


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc)


def _pymysql_connection(pooled) -> "pymysql.connections.Connection | None":
    """The pymysql connection inside a DBUtils pooled connection (PooledDB -> SteadyDB -> pymysql)."""
    steady = getattr(pooled, "_con", None)
    raw = getattr(steady, "_con", None)
    return raw if isinstance(raw, pymysql.connections.Connection) else None


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
    def cursor(self, timeout: float | None = None) -> Iterator:
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


def open_database(settings: DatabaseSettings) -> MySQLDatabase | SQLiteDatabase:
    return MySQLDatabase(settings) if settings.backend == "mysql" else SQLiteDatabase(settings)
