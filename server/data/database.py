"""Database connections: MySQL through a DBUtils pool of pymysql connections, or the embedded
SQLite file. Both hand out DB-API cursors with `cursor(timeout)`; the SQL is in repository.py."""
from __future__ import annotations

import sqlite3
import threading
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
        self.pool = PooledDB(
            creator=pymysql, mincached=0, maxcached=settings.pool_max_cached,
            maxconnections=limit, blocking=False, ping=settings.pool_ping,
            host=params["host"], port=params["port"], user=params["user"], password=params["password"],
            database=params["database"], connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout, write_timeout=settings.write_timeout,
            autocommit=settings.autocommit, charset="utf8mb4")
        self._warm = settings.pool_min_cached
        self.read_timeout = settings.read_timeout

    def warm_up(self) -> None:
        """Open pool_min_cached connections now (after the server is reachable)."""
        held = [self.pool.connection() for _ in range(self._warm)]
        for connection in held:
            connection.close()

    @staticmethod
    def is_failure(exc: BaseException) -> bool:
        """Errors that say the database itself is unwell (they count against the breaker)."""
        return isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError))

    @contextmanager
    def cursor(self, timeout: float | None = None) -> Iterator:
        if self._slots is not None:
            wait = None if timeout is None else max(0.0, timeout)
            if not self._slots.acquire(blocking=self.blocking, timeout=wait if self.blocking else None):
                raise Unavailable("database connection pool exhausted: every connection is in use")
        try:
            try:
                connection = self.pool.connection()
            except TooManyConnections:
                raise Unavailable("database connection pool exhausted: every connection is in use") from None
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
                if bounded and "timed out" in str(exc):
                    raise DeadlineExceeded("deadline exceeded waiting for the database") from exc
                raise
            finally:
                if raw is not None:
                    raw._read_timeout = self.read_timeout
                with self._count_lock:
                    self._in_use -= 1
                connection.close()  # back to the pool
        finally:
            if self._slots is not None:
                self._slots.release()

    def pool_status(self) -> tuple[int, int]:
        """(connections lent out, idle connections cached)."""
        return self._in_use, len(getattr(self.pool, "_idle_cache", ()))

    def close(self) -> None:
        self.pool.close()


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
