"""Database connections: MySQL through a small pool of pymysql connections, or the embedded
SQLite file. Both hand out DB-API cursors with `cursor(deadline)`; the SQL is in repository.py."""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pymysql

from ..config import DatabaseSettings
from ..deadline import Deadline
from ..errors import DeadlineExceeded, Unavailable


class MySQLDatabase:
    """MySQL/MariaDB through a small pool of pymysql connections.

    Every wait is bounded by the call's deadline: for a free connection, for a new connection's
    set-up (TCP connect, then the handshake, which pymysql reads with read_timeout) and for every
    reply. Nothing is sent but the statements (no ping when a connection is taken, no rollback
    when it is given back, with autocommit on), and no lock is held while talking to the server. A
    connection taken from the pool that turns out dead on its first read is replaced and the
    read retried once (a write is not: it may have been applied).
    """
    backend = "mysql"
    placeholder = "%s"

    def __init__(self, settings: DatabaseSettings):
        params = settings.mysql_params()
        self._params = dict(host=params["host"], port=params["port"], user=params["user"],
                            password=params["password"], database=params["database"],
                            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
                            write_timeout=settings.write_timeout, autocommit=settings.autocommit, charset="utf8mb4")
        self.read_timeout = settings.read_timeout
        self.blocking = settings.pool_blocking
        limit = settings.pool_max_connections
        self._slots = threading.BoundedSemaphore(limit) if limit else None  # connections lent out at most
        self._max_idle = settings.pool_max_cached
        self._ping_on_take = bool(settings.pool_ping)
        self._warm = settings.pool_min_cached
        self._idle: list[pymysql.connections.Connection] = []
        self._lock = threading.Lock()  # guards _idle and _in_use only: never held over I/O
        self._in_use = 0
        self._closed = False
        self._probe: pymysql.connections.Connection | None = None
        self._probe_lock = threading.Lock()

    def _open(self, deadline: Deadline | None) -> pymysql.connections.Connection:
        params = dict(self._params)
        sooner_than = False
        if deadline is not None:
            sooner_than = deadline.sooner_than(self.read_timeout)
            params["connect_timeout"] = deadline.io_timeout(params["connect_timeout"])
            params["read_timeout"] = deadline.io_timeout(params["read_timeout"])
        try:
            return pymysql.connect(**params)
        except pymysql.err.OperationalError as exc:
            if sooner_than and _timed_out(exc):
                raise DeadlineExceeded("deadline exceeded connecting to the database") from exc
            raise

    def _take(self, deadline: Deadline | None) -> tuple[pymysql.connections.Connection, bool]:
        """A connection, and whether it comes from the pool (it may have died there)."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None  # the most recently used
        if connection is not None and self._ping_on_take:
            if deadline is not None:
                connection._read_timeout = deadline.io_timeout(self.read_timeout)
            try:
                connection.ping(reconnect=False)
            except pymysql.err.MySQLError:
                _close_quietly(connection)
                connection = None
        if connection is None:
            return self._open(deadline), False
        return connection, True

    def _give(self, connection: pymysql.connections.Connection) -> None:
        if connection.open and not self._params["autocommit"]:
            try:  # without autocommit, end the transaction so the next user sees fresh data
                connection.rollback()
            except pymysql.err.MySQLError:
                _close_quietly(connection)
        if connection.open:
            connection._read_timeout = self.read_timeout
            with self._lock:
                if not self._closed and len(self._idle) < self._max_idle:
                    self._idle.append(connection)
                    return
        _close_quietly(connection)

    def warm_up(self) -> None:
        """Open pool_min_cached connections now (once the server answers)."""
        for connection in [self._open(None) for _ in range(self._warm)]:
            self._give(connection)

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
        if self._slots is not None:
            bound = deadline or Deadline.after(self.read_timeout)
            if not self._slots.acquire(blocking=self.blocking, timeout=bound.left() if self.blocking else None):
                if self.blocking and deadline is not None and deadline.expired():
                    raise DeadlineExceeded("deadline exceeded waiting for a database connection")
                raise Unavailable("database connection pool exhausted: every connection is in use")
        try:
            connection, reused = self._take(deadline)
            try:
                cursor = _Cursor(self, connection, reused, deadline)
            except BaseException:
                self._give(connection)
                raise
            with self._lock:
                self._in_use += 1
            try:
                yield cursor
            except pymysql.err.OperationalError as exc:
                if cursor.bounded and _timed_out(exc):
                    raise DeadlineExceeded("deadline exceeded waiting for the database") from exc
                raise
            finally:
                cursor.close()
                with self._lock:
                    self._in_use -= 1
                self._give(cursor.connection)
        finally:
            if self._slots is not None:
                self._slots.release()

    def pool_status(self) -> tuple[int, int]:
        """(connections lent out, idle connections cached)."""
        with self._lock:
            return self._in_use, len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            _close_quietly(connection)
        with self._probe_lock:
            if self._probe is not None:
                _close_quietly(self._probe)
                self._probe = None


class _Cursor:
    """A pymysql cursor on a pooled connection that waits for replies no longer than the call has
    left, and replaces a connection that died in the pool when the first statement is a read."""

    def __init__(self, database: MySQLDatabase, connection, reused: bool, deadline: Deadline | None):
        self._database = database
        self._deadline = deadline
        self._retry = reused
        self.bounded = False
        self._use(connection)

    def _use(self, connection) -> None:
        self.connection = connection
        if self._deadline is not None:
            self._deadline.check("waiting for the database")
            # pymysql applies _read_timeout to every packet read: a stalled server frees the
            # worker at the deadline.
            self.bounded = self._deadline.sooner_than(self._database.read_timeout)
            connection._read_timeout = self._deadline.io_timeout(self._database.read_timeout)
        self._cursor = connection.cursor()

    def execute(self, query: str, args=None):
        retry, self._retry = self._retry, False
        try:
            return self._cursor.execute(query, args)
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError) as exc:
            if not (retry and _connection_lost(exc) and query.lstrip()[:6].upper() == "SELECT"):
                raise
        _close_quietly(self.connection)
        self._use(self._database._open(self._deadline))
        return self._cursor.execute(query, args)

    def executemany(self, query: str, args):
        self._retry = False
        return self._cursor.executemany(query, args)

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    @property
    def description(self):
        return self._cursor.description

    def close(self) -> None:
        try:
            self._cursor.close()
        except pymysql.err.MySQLError:  # a broken connection: it is not given back
            _close_quietly(self.connection)


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc)


def _connection_lost(exc: BaseException) -> bool:
    """The connection was closed under us (server restart, idle timeout), not a slow server."""
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


def open_database(settings: DatabaseSettings) -> MySQLDatabase | SQLiteDatabase:
    return MySQLDatabase(settings) if settings.backend == "mysql" else SQLiteDatabase(settings)
