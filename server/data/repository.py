"""All SQL of the service, parameterized: values are never formatted into a statement.

Statements are written with %s placeholders and run unchanged on MySQL/MariaDB (pymysql) and,
with ? placeholders, on the embedded SQLite file. Every call goes through the circuit breaker.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from ..domain import Car, ConfigChange, Customer
from ..deadline import Deadline
from ..errors import Unavailable
from .breaker import CircuitBreaker
from .database import MySQLDatabase, SQLiteDatabase
from .filters import Bounds, fold

T = TypeVar("T")
log = logging.getLogger("tradeup.data")

# Binary collation for ids, so that `car_id ASC` sorts as the engine and the snapshot do.
_ID_TYPE = {"mysql": "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin", "sqlite": "VARCHAR(64)"}
_TABLE_SUFFIX = {"mysql": " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", "sqlite": ""}

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS customers (
        customer_id {id_type} NOT NULL PRIMARY KEY,
        current_monthly_payment DECIMAL(12,2) NOT NULL,
        outstanding_balance DECIMAL(12,2) NOT NULL,
        current_car_price DECIMAL(12,2) NOT NULL,
        current_car_year SMALLINT NOT NULL,
        current_car_km INT NOT NULL,
        risk_profile_name VARCHAR(16) NOT NULL,
        risk_profile_index SMALLINT NOT NULL,
        region VARCHAR(64) NOT NULL DEFAULT '',
        current_car_brand VARCHAR(64) NOT NULL DEFAULT '',
        current_car_model VARCHAR(64) NOT NULL DEFAULT ''
    ){suffix}""",
    """CREATE TABLE IF NOT EXISTS inventory (
        car_id {id_type} NOT NULL PRIMARY KEY,
        brand VARCHAR(64) NOT NULL,
        model VARCHAR(128) NOT NULL,
        year SMALLINT NOT NULL,
        kilometers INT NOT NULL,
        regular_price DECIMAL(12,2) NOT NULL,
        promotion_price DECIMAL(12,2) NULL,
        price DECIMAL(12,2) GENERATED ALWAYS AS (CASE WHEN promotion_price IS NOT NULL
            AND promotion_price < regular_price THEN promotion_price ELSE regular_price END) STORED,
        region VARCHAR(64) NOT NULL DEFAULT '',
        color VARCHAR(32) NOT NULL DEFAULT '',
        available SMALLINT NOT NULL DEFAULT 1
    ){suffix}""",
)
# (name, table, columns). The prefilter index serves the prefilter in its own order (year desc,
# price desc, car_id asc), so the database reads index entries in order, checks km and region
# from the index itself, and stops after LIMIT matches instead of sorting every candidate.
INDEXES = (
    ("idx_inventory_trade_up", "inventory", "(available, year DESC, price DESC, car_id, kilometers, region)"),
    # The change feed reads the rows stamped since a process's snapshot (below).
    ("idx_inventory_updated_at", "inventory", "(updated_at)"),
    # Customer search pages by customer_id within a region or a risk profile (SEARCH_CUSTOMERS).
    ("idx_customers_region", "customers", "(region, customer_id)"),
    ("idx_customers_risk_profile", "customers", "(risk_profile_name, customer_id)"),
)
# `CREATE INDEX IF NOT EXISTS` is MariaDB and SQLite only: ask the catalogue first (MySQL too).
INDEX_EXISTS = {
    "mysql": "SELECT COUNT(*) FROM information_schema.statistics "
             "WHERE table_schema = DATABASE() AND table_name = %s AND index_name = %s",
    "sqlite": "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = %s AND name = %s",
}
ER_DUP_KEYNAME = 1061  # MySQL/MariaDB: another process created the index since we asked

# The change feed (server/services/changefeed.py). Every row of `inventory` carries `updated_at`,
# set by the database itself on every insert and update, whoever writes (MySQL: ON UPDATE
# CURRENT_TIMESTAMP(6); SQLite: a trigger stamping a sequence number, SQLite having one writer),
# so each process re-reads only the rows changed since its snapshot. `change_versions` is one row
# of counters: the configuration version, the inventory version and the version from which a
# full reload is due (InvalidateCache, deletes). All statements below are portable between
# MySQL and MariaDB (no CREATE INDEX IF NOT EXISTS); existing columns and indexes are checked first.
_STAMP_TYPE = {"mysql": "TIMESTAMP(6)", "sqlite": "INTEGER"}
_STAMP_COLUMN = {
    "mysql": "updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)",
    "sqlite": "updated_at INTEGER NOT NULL DEFAULT 0",
}
_AUTO_ID = {"mysql": "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT"}
_TIME_TYPE = {"mysql": "DATETIME(6)", "sqlite": "TEXT"}
CHANGE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS change_versions (
        id SMALLINT NOT NULL PRIMARY KEY,
        config_version BIGINT NOT NULL DEFAULT 0,
        inventory_version BIGINT NOT NULL DEFAULT 0,
        reload_version BIGINT NOT NULL DEFAULT 0,
        inventory_mark {stamp_type} NULL DEFAULT NULL,
        stamp_sequence BIGINT NOT NULL DEFAULT 0
    ){suffix}""",
    """CREATE TABLE IF NOT EXISTS config_overrides (
        key_path VARCHAR(191) NOT NULL PRIMARY KEY,
        value_json TEXT NOT NULL,
        version BIGINT NOT NULL,
        changed_at {time_type} NOT NULL,
        changed_by VARCHAR(128) NOT NULL DEFAULT '',
        previous_json TEXT NULL
    ){suffix}""",
    """CREATE TABLE IF NOT EXISTS config_history (
        id {auto_id},
        version BIGINT NOT NULL,
        key_path VARCHAR(191) NOT NULL,
        old_json TEXT NULL,
        new_json TEXT NULL,
        changed_at {time_type} NOT NULL,
        changed_by VARCHAR(128) NOT NULL DEFAULT ''
    ){suffix}""",
)
_SEED_VERSIONS = {"mysql": "INSERT IGNORE INTO change_versions (id) VALUES (1)",
                  "sqlite": "INSERT OR IGNORE INTO change_versions (id) VALUES (1)"}
_HAS_COLUMN = {"mysql": "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() "
                        "AND table_name = '{table}' AND column_name = '{column}'",
               "sqlite": "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"}
ADD_COLUMN = "ALTER TABLE {table} ADD COLUMN {definition}"
# Columns added since a table's first release: (table, column, definition per backend).
ADDED_COLUMNS = (
    ("inventory", "updated_at", _STAMP_COLUMN),
    *(("customers", name, dict.fromkeys(("mysql", "sqlite"), f"{name} VARCHAR(64) NOT NULL DEFAULT ''"))
      for name in ("current_car_brand", "current_car_model")),
)
# SQLite stamps come from a counter (not MAX + 1: REPLACE deletes the newest row before inserting).
_STAMP = ("UPDATE change_versions SET stamp_sequence = stamp_sequence + 1 WHERE id = 1; "
          "UPDATE inventory SET updated_at = (SELECT stamp_sequence FROM change_versions WHERE id = 1) "
          "WHERE car_id = NEW.car_id; END")
SQLITE_STAMP_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS inventory_stamp_insert AFTER INSERT ON inventory BEGIN {_STAMP}",
    "CREATE TRIGGER IF NOT EXISTS inventory_stamp_update AFTER UPDATE OF car_id, brand, model, year, kilometers, "
    f"regular_price, promotion_price, region, color, available ON inventory BEGIN {_STAMP}",
)
CHANGE_STATE = ("SELECT config_version, inventory_version, reload_version, inventory_mark, "
                "(SELECT MAX(updated_at) FROM inventory) FROM change_versions WHERE id = 1")
# Moves the inventory version once per newly stamped row set, whichever process sees it first.
NOTE_INVENTORY_CHANGE = ("UPDATE change_versions SET inventory_version = inventory_version + 1, inventory_mark = %s "
                         "WHERE id = 1 AND (inventory_mark IS NULL OR inventory_mark < %s)")
BUMP_INVENTORY = ("UPDATE change_versions SET inventory_version = inventory_version + 1, "
                  "inventory_mark = (SELECT MAX(updated_at) FROM inventory) WHERE id = 1")
# Two statements: MySQL and SQLite disagree on which value a later assignment of one UPDATE sees.
REQUEST_RELOAD = ("UPDATE change_versions SET inventory_version = inventory_version + 1 WHERE id = 1",
                  "UPDATE change_versions SET reload_version = inventory_version WHERE id = 1")
INVENTORY_VERSION = "SELECT inventory_version FROM change_versions WHERE id = 1"
LOCK_CONFIG = {"mysql": "SELECT config_version FROM change_versions WHERE id = 1 FOR UPDATE",
               "sqlite": "SELECT config_version FROM change_versions WHERE id = 1"}
CONFIG_VERSION = "SELECT config_version FROM change_versions WHERE id = 1"
CONFIG_OVERRIDES = "SELECT key_path, value_json FROM config_overrides"
DELETE_OVERRIDE = "DELETE FROM config_overrides WHERE key_path = %s"
PUT_OVERRIDE = ("INSERT INTO config_overrides (key_path, value_json, version, changed_at, changed_by, previous_json) "
                "VALUES (%s, %s, %s, %s, %s, %s)")
ADD_HISTORY = ("INSERT INTO config_history (version, key_path, old_json, new_json, changed_at, changed_by) "
               "VALUES (%s, %s, %s, %s, %s, %s)")
SET_CONFIG_VERSION = "UPDATE change_versions SET config_version = %s WHERE id = 1"
CONFIG_HISTORY = ("SELECT version, key_path, old_json, new_json, changed_at, changed_by FROM config_history "
                  "WHERE SUBSTR(key_path, 1, %s) = %s ORDER BY id DESC LIMIT %s")
# SQLite: IMMEDIATE takes the write lock at once, so two writers serialize instead of failing.
# Stamps cross process boundaries as values: read and compare them in UTC, never in a local time
# zone whose clock goes back an hour once a year. Run once on each new MySQL connection.
MYSQL_SESSION = "SET time_zone = '+00:00'"
_BEGIN = {("mysql", False): "START TRANSACTION", ("mysql", True): "START TRANSACTION",
          ("sqlite", False): "BEGIN", ("sqlite", True): "BEGIN IMMEDIATE"}

_CUSTOMER_COLUMNS = ("customer_id, current_monthly_payment, outstanding_balance, current_car_price, "
                     "current_car_year, current_car_km, risk_profile_name, risk_profile_index, region, "
                     "current_car_brand, current_car_model")
_CAR_COLUMNS = "car_id, brand, model, year, kilometers, regular_price, promotion_price, region, color, available"

SELECT_ONE = "SELECT 1"
GET_CUSTOMER = f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id = %s"
GET_CUSTOMERS = f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id IN "  # + (%s, ...)
PUT_CUSTOMER = f"REPLACE INTO customers ({_CUSTOMER_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})"
PUT_CAR = f"REPLACE INTO inventory ({_CAR_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
SET_CAR_AVAILABLE = "UPDATE inventory SET available = %s WHERE car_id = %s"
AVAILABLE_CARS = (f"SELECT {_CAR_COLUMNS} FROM inventory WHERE available = 1 "
                  "ORDER BY year DESC, price DESC, car_id ASC")
_PREFILTER_WHERE = "WHERE available = 1 AND price > %s AND year >= %s AND kilometers < %s"
_PREFILTER_ORDER = " ORDER BY year DESC, price DESC, car_id ASC LIMIT %s"
PREFILTER = f"SELECT car_id FROM inventory {_PREFILTER_WHERE}{_PREFILTER_ORDER}"
# Names compared exactly, the same on both databases: MySQL's default collation ignores case and
# accents, so there an index on the column finds the candidates and a binary comparison keeps the
# exact ones (the snapshot compares regions exactly too).
_EXACTLY = {"mysql": "{column} = %s AND {column} COLLATE utf8mb4_bin = %s", "sqlite": "{column} = %s"}
PREFILTER_SAME_REGION = {backend: f"SELECT car_id FROM inventory {_PREFILTER_WHERE} AND "
                                  f"{exactly.format(column='region')}{_PREFILTER_ORDER}"
                         for backend, exactly in _EXACTLY.items()}
# Consideration filters (server/data/filters.py), added to the prefilter's WHERE for the bounds
# given. Names compare folded, exactly: MySQL lowers under a binary collation (its default one
# ignores accents), SQLite is lent Python's lower (its own folds ASCII only).
_FOLDED = {"mysql": "LOWER({column}) COLLATE utf8mb4_bin", "sqlite": "LOWER({column})"}
_FILTER_RANGES = (("price", "price_low", "price_high"), ("year", "year_low", "year_high"),
                  ("kilometers", None, "km_high"))
_FILTER_NAMES = (("brand", "brands", "IN"), ("brand", "excluded_brands", "NOT IN"), ("region", "regions", "IN"),
                 ("color", "colors", "IN"))
EXPLAIN_PREFILTER = "EXPLAIN " + PREFILTER
# Customer search: each condition is added only when asked for, values always as parameters, and
# the same answer on both databases. An id prefix is a range of the primary key (case as stored);
# text is a LIKE pattern whose own `%`, `_` and `!` are escaped with `!` (a backslash means
# different things to MySQL and SQLite), matched folded (as the prefilter folds names) in ids and
# regions: MySQL's ids compare in binary, its regions ignore accents. Customer ids are ASCII: text
# with other characters can only be in a region. Region and risk profile match exactly (_EXACTLY).
SEARCH_CUSTOMERS = f"SELECT {_CUSTOMER_COLUMNS} FROM customers"
_REGION_LIKE = {backend: folded.format(column="region") + " LIKE %s ESCAPE '!'" for backend, folded in _FOLDED.items()}
SEARCH_CONDITIONS = {backend: {
    "id_prefix": "customer_id >= %s AND customer_id < %s",
    "text": f"(LOWER(customer_id) LIKE %s ESCAPE '!' OR {_REGION_LIKE[backend]})",
    "text_not_ascii": _REGION_LIKE[backend],
    "region": _EXACTLY[backend].format(column="region"),
    "risk_profile": _EXACTLY[backend].format(column="risk_profile_name"),
    "after": "customer_id > %s",
    "before": "customer_id < %s",
} for backend in _FOLDED}
SEARCH_ORDER = {False: " ORDER BY customer_id ASC LIMIT %s", True: " ORDER BY customer_id DESC LIMIT %s"}
ID_PREFIX_END = "\x7f"  # above every printable ASCII character: the end of an id-prefix range
COUNT_CARS = "SELECT COUNT(*) FROM inventory"
COUNT_CUSTOMERS = "SELECT COUNT(*) FROM customers"
HOLDS_DATA = "SELECT EXISTS (SELECT 1 FROM inventory) OR EXISTS (SELECT 1 FROM customers)"
# Rows per statement of a seed: between two, a stop request rolls the whole seed back.
SEED_CHUNK_ROWS = 500
DELETE_CARS = "DELETE FROM inventory"
DELETE_CUSTOMERS = "DELETE FROM customers"
CHANGED_CARS = f"SELECT {_CAR_COLUMNS}, updated_at FROM inventory WHERE updated_at > %s"

# Reconciliation (ChangeFeed, every cache.reconcile_seconds) finds what stamps cannot show: rows
# deleted by plain SQL, MySQL writes that committed later than the overlap window. It compares
# the count and a checksum of the available cars' served fields (id, year, km, price, region: all
# in the prefilter index, so the database reads the index only) with the snapshot's: first of the
# whole inventory, then, if they differ, per bucket of car ids, and re-reads the buckets that
# differ. `car_checksum` computes the same values in Python. SQLite has no CRC32 (the repository
# lends it zlib's) and no CONCAT_WS before 3.44.
RECONCILE_BUCKETS = 256
_BUCKET = "(CRC32(car_id) & 255)"
_CHECKSUM = {"mysql": "CRC32(CONCAT_WS('|', car_id, year, kilometers, price, region))",
             "sqlite": "CRC32(car_id || '|' || year || '|' || kilometers || '|' || printf('%.2f', price) || '|' || region)"}
INVENTORY_CHECKSUM = {backend: f"SELECT COUNT(*), SUM({checksum}) FROM inventory WHERE available = 1"
                      for backend, checksum in _CHECKSUM.items()}
BUCKET_CHECKSUMS = {backend: f"SELECT {_BUCKET}, COUNT(*), SUM({checksum}) FROM inventory WHERE available = 1 "
                             "GROUP BY 1" for backend, checksum in _CHECKSUM.items()}
CARS_IN_BUCKETS = f"SELECT {_CAR_COLUMNS} FROM inventory WHERE available = 1 AND {_BUCKET} IN "  # + (%s, ...)
# Moves the inventory version once for a difference found, unless another process moved it already
# (and, as BUMP_INVENTORY, covers the stamps so far: no process moves it again for those rows).
MOVE_INVENTORY_VERSION = ("UPDATE change_versions SET inventory_version = inventory_version + 1, "
                          "inventory_mark = (SELECT MAX(updated_at) FROM inventory) "
                          "WHERE id = 1 AND inventory_version = %s")


def car_bucket(car_id: str) -> int:
    """The reconciliation bucket of a car, as the statements above compute it."""
    return zlib.crc32(car_id.encode()) & 255


def car_checksum(car: Car) -> int:
    """The checksum of an available car's served fields, as the statements above compute it."""
    return zlib.crc32(f"{car.car_id}|{car.year}|{car.kilometers}|{car.price:.2f}|{car.region}".encode())


def _sqlite_crc32(text: str) -> int:
    return zlib.crc32(text.encode())


@dataclass(frozen=True)
class ChangeState:
    """The change_versions row, and the newest stamp on the inventory (opaque, comparable)."""
    config_version: int
    inventory_version: int
    reload_version: int
    inventory_mark: Any
    latest_stamp: Any


def _ensure(cursor, exists: str, create: str) -> None:
    """Run `create` unless `exists` counts the object already; replicas migrating at the same
    time may both try: the loser's error is ignored once the object is there."""
    cursor.execute(exists)
    if cursor.fetchone()[0]:
        return
    try:
        cursor.execute(create)
    except Exception:
        cursor.execute(exists)
        if not cursor.fetchone()[0]:
            raise


def _car(row) -> Car:
    return Car(car_id=row[0], brand=row[1], model=row[2], year=int(row[3]), kilometers=int(row[4]),
               regular_price=float(row[5]), promotion_price=None if row[6] is None else float(row[6]),
               region=row[7] or "", color=row[8] or "", available=bool(row[9]))


def _customer(row) -> Customer:
    return Customer(customer_id=row[0], current_monthly_payment=float(row[1]), outstanding_balance=float(row[2]),
                    current_car_price=float(row[3]), current_car_year=int(row[4]), current_car_km=int(row[5]),
                    risk_profile_name=row[6], risk_profile_index=int(row[7]), region=row[8] or "",
                    current_car_brand=row[9] or "", current_car_model=row[10] or "")


def _car_rows(cars: Iterable[Car]) -> list[tuple]:
    return [(c.car_id, c.brand, c.model, c.year, c.kilometers, c.regular_price, c.promotion_price,
             c.region, c.color, int(c.available)) for c in cars]


def _customer_rows(customers: Iterable[Customer]) -> list[tuple]:
    return [(c.customer_id, c.current_monthly_payment, c.outstanding_balance, c.current_car_price,
             c.current_car_year, c.current_car_km, c.risk_profile_name, c.risk_profile_index, c.region,
             c.current_car_brand, c.current_car_model) for c in customers]


def _delete_all(cursor) -> None:
    cursor.execute(DELETE_CARS)
    cursor.execute(DELETE_CUSTOMERS)
    for statement in REQUEST_RELOAD:  # deleted rows carry no stamp: every process reloads
        cursor.execute(statement)


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Repository:
    def __init__(self, database: MySQLDatabase | SQLiteDatabase, breaker: CircuitBreaker,
                 on_query: Callable[[str, float], None] | None = None):
        self.database = database
        self.breaker = breaker
        self.on_query = on_query  # (query name, seconds): for metrics

    @property
    def backend(self) -> str:
        return self.database.backend

    def _sql(self, statement: str) -> str:
        return statement if self.database.placeholder == "%s" else statement.replace("%s", "?")

    def _run(self, name: str, work: Callable[[Any], T], deadline: Deadline | None) -> T:
        if deadline is not None:
            deadline.check("before the database call")

        def operation() -> T:
            started = time.perf_counter()
            with self.database.cursor(deadline) as cursor:
                result = work(cursor)
            if self.on_query:
                self.on_query(name, time.perf_counter() - started)
            return result

        try:
            return self.breaker.call(operation, self.database.is_failure)
        except Unavailable:
            raise
        except Exception as exc:
            if self.database.is_failure(exc):
                # The driver's text names hosts and ports: it goes to the log (with the request
                # id), never to the client.
                log.warning("database call %s failed: %s: %s", name, exc.__class__.__name__, exc)
                raise Unavailable("database unavailable") from exc
            raise

    # --- schema and seeding ---------------------------------------------------------------
    def migrate(self) -> None:
        """Create the tables and indexes if they do not exist (idempotent)."""
        backend = self.backend
        names = {"id_type": _ID_TYPE[backend], "suffix": _TABLE_SUFFIX[backend], "stamp_type": _STAMP_TYPE[backend],
                 "auto_id": _AUTO_ID[backend], "time_type": _TIME_TYPE[backend]}

        def work(cursor):
            for statement in SCHEMA + CHANGE_SCHEMA:
                cursor.execute(statement.format(**names))
            cursor.execute(_SEED_VERSIONS[backend])
            for table, column, definition in ADDED_COLUMNS:
                _ensure(cursor, _HAS_COLUMN[backend].format(table=table, column=column),
                        ADD_COLUMN.format(table=table, definition=definition[backend]))
            for name, table, columns in INDEXES:
                cursor.execute(self._sql(INDEX_EXISTS[backend]), (table, name))
                if cursor.fetchone()[0]:
                    continue
                try:
                    cursor.execute(f"CREATE INDEX {name} ON {table} {columns}")
                except Exception as exc:
                    if not (backend == "mysql" and exc.args and exc.args[0] == ER_DUP_KEYNAME):
                        raise
            if backend == "sqlite":
                for statement in SQLITE_STAMP_TRIGGERS:
                    cursor.execute(statement)
        if backend == "sqlite":  # its DDL is transactional: an interrupted migration leaves nothing behind
            self._run("migrate", lambda cursor: self._transaction(cursor, work, write=True), None)
        else:  # MySQL commits each DDL statement: every step above is idempotent, a rerun completes it
            self._run("migrate", work, None)

    def _transaction(self, cursor, work: Callable[[Any], T], write: bool = False) -> T:
        cursor.execute(_BEGIN[self.backend, write])
        try:
            result = work(cursor)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return result

    def put_customers(self, customers: Iterable[Customer]) -> None:
        rows = _customer_rows(customers)
        self._run("put_customers", lambda cursor: cursor.executemany(self._sql(PUT_CUSTOMER), rows), None)

    def put_cars(self, cars: Iterable[Car]) -> None:
        """Insert or replace cars (new stock, repricing); the inventory version moves."""
        rows = _car_rows(cars)

        def work(cursor):
            cursor.executemany(self._sql(PUT_CAR), rows)
            cursor.execute(BUMP_INVENTORY)
        self._run("put_cars", work, None)

    def seed(self, cars: Iterable[Car], customers: Iterable[Customer], replace: bool = False,
             only_if_empty: bool = False, stop: threading.Event | None = None) -> bool:
        """Write cars and customers in one transaction: whatever ends it early (`stop` set, checked
        every SEED_CHUNK_ROWS rows; a signal; a kill) leaves none of them. `replace`: delete every
        car and customer first; `only_if_empty`: write nothing unless the database holds no car and
        no customer (decided inside the transaction: concurrent seeders load it once). Returns
        whether it wrote; the inventory version moves when it did."""
        statements = [(self._sql(PUT_CAR), _car_rows(cars)), (self._sql(PUT_CUSTOMER), _customer_rows(customers))]

        def work(cursor):
            if only_if_empty:
                cursor.execute(HOLDS_DATA)
                if cursor.fetchone()[0]:
                    return False
            if replace:
                _delete_all(cursor)
            for statement, rows in statements:
                for first in range(0, len(rows), SEED_CHUNK_ROWS):
                    if stop is not None and stop.is_set():
                        raise Unavailable("stopping: the data load was rolled back", reason="SHUTTING_DOWN")
                    cursor.executemany(statement, rows[first:first + SEED_CHUNK_ROWS])
            cursor.execute(BUMP_INVENTORY)
            return True
        return self._run("seed", lambda cursor: self._transaction(cursor, work, write=True), None)

    def set_car_available(self, car_id: str, available: bool) -> None:
        def work(cursor):
            cursor.execute(self._sql(SET_CAR_AVAILABLE), (int(available), car_id))
            cursor.execute(BUMP_INVENTORY)
        self._run("set_car_available", work, None)

    def delete_all(self) -> None:
        self._run("delete_all", lambda cursor: self._transaction(cursor, _delete_all, write=True), None)

    def counts(self) -> tuple[int, int]:
        """(cars, customers)."""
        def work(cursor):
            cursor.execute(COUNT_CARS)
            cars = cursor.fetchone()[0]
            cursor.execute(COUNT_CUSTOMERS)
            return int(cars), int(cursor.fetchone()[0])
        return self._run("counts", work, None)

    # --- the service's queries ----------------------------------------------------------------
    def ping(self, deadline: Deadline | None = None) -> None:
        def work(cursor):
            cursor.execute(SELECT_ONE)
            cursor.fetchall()
        self._run("ping", work, deadline)

    def get_customer(self, customer_id: str, deadline: Deadline | None = None) -> Customer | None:
        """Always read fresh: customers are never cached."""
        def work(cursor):
            cursor.execute(self._sql(GET_CUSTOMER), (customer_id,))
            return cursor.fetchone()
        row = self._run("get_customer", work, deadline)
        return None if row is None else _customer(row)

    def get_customers(self, customer_ids: Sequence[str], deadline: Deadline | None = None) -> dict[str, Customer]:
        """The stored customers among these ids, read fresh in a few queries (watched customers)."""
        ids = list(customer_ids)

        def work(cursor):
            rows = []
            for first in range(0, len(ids), 500):
                chunk = ids[first:first + 500]
                cursor.execute(self._sql(GET_CUSTOMERS + "(" + ", ".join(["%s"] * len(chunk)) + ")"), chunk)
                rows += cursor.fetchall()
            return rows
        return {row[0]: _customer(row) for row in self._run("get_customers", work, deadline)} if ids else {}

    def search_customers(self, id_prefix: str, text: str, region: str, risk_profile: str, descending: bool,
                         after: str | None, limit: int, deadline: Deadline | None = None) -> list[Customer]:
        """A page of stored customers by customer_id (after `after`, in the direction asked)."""
        conditions, values = [], []

        def add(name: str, *parameters) -> None:
            condition = SEARCH_CONDITIONS[self.backend][name]
            conditions.append(condition)
            values.extend(parameters * (condition.count("%s") // len(parameters)))  # a value compared twice

        if id_prefix:
            add("id_prefix", id_prefix, id_prefix + ID_PREFIX_END)
        if text:
            pattern = "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"
            if text.isascii():
                add("text", fold(pattern), fold(pattern))
            else:
                add("text_not_ascii", fold(pattern))
        if region:
            add("region", region)
        if risk_profile:
            add("risk_profile", risk_profile)
        if after is not None:
            add("before" if descending else "after", after)
        statement = SEARCH_CUSTOMERS + (" WHERE " + " AND ".join(conditions) if conditions else "") \
            + SEARCH_ORDER[descending]

        def work(cursor):
            if text and self.backend == "sqlite":
                cursor.connection.create_function("LOWER", 1, fold, deterministic=True)
            cursor.execute(self._sql(statement), (*values, limit))
            return cursor.fetchall()
        return [_customer(row) for row in self._run("search_customers", work, deadline)]

    def prefilter_ids(self, min_price: float, min_year: int, max_km: int, region: str | None, limit: int,
                      bounds: Bounds | None = None, deadline: Deadline | None = None) -> list[str]:
        """Stage 1 (SPEC §2): ids of the available cars that are logical trade-ups, in order; with
        `bounds`, only those passing the consideration filters too (before the limit)."""
        statement, values = PREFILTER, [min_price, min_year, max_km]
        if region is not None:
            statement = PREFILTER_SAME_REGION[self.backend]
            values += [region] * _EXACTLY[self.backend].count("%s")
        if bounds is not None:
            where, extra = self._filter_where(bounds)
            statement = statement.replace(_PREFILTER_ORDER, where + _PREFILTER_ORDER)
            values += extra

        def work(cursor):
            if bounds is not None and self.backend == "sqlite":
                cursor.connection.create_function("LOWER", 1, fold, deterministic=True)
            cursor.execute(self._sql(statement), (*values, limit))
            return [row[0] for row in cursor.fetchall()]
        return self._run("prefilter", work, deadline)

    def _filter_where(self, bounds: Bounds) -> tuple[str, list]:
        """The prefilter's conditions for these bounds (AND ...) and their values."""
        where, values = [], []
        for column, low, high in _FILTER_RANGES:
            for name, operator in ((low, ">="), (high, "<=")):
                value = getattr(bounds, name) if name else None
                if value is not None:
                    where.append(f"{column} {operator} %s")
                    values.append(value)
        for column, name, operator in _FILTER_NAMES:
            wanted = getattr(bounds, name)
            if wanted is None or (operator == "NOT IN" and not wanted):
                continue
            if not wanted:  # no name can match
                where.append("1 = 0")
                continue
            folded = _FOLDED[self.backend].format(column=column)
            where.append(f"{folded} {operator} ({', '.join(['%s'] * len(wanted))})")
            values += sorted(wanted)
        if bounds.promotion_only:
            where.append("price < regular_price")
        return "".join(f" AND {condition}" for condition in where), values

    def explain_prefilter(self) -> list[dict[str, Any]]:
        """The query plan of the prefilter (MySQL's EXPLAIN or SQLite's EXPLAIN QUERY PLAN)."""
        def work(cursor):
            if self.backend == "mysql":
                cursor.execute(EXPLAIN_PREFILTER, (100000.0, 2015, 100000, 500))
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + self._sql(PREFILTER), (100000.0, 2015, 100000, 500))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]
        return self._run("explain", work, None)

    def available_cars(self, deadline: Deadline | None = None) -> list[Car]:
        """Every available car, for the inventory snapshot."""
        def work(cursor):
            cursor.execute(AVAILABLE_CARS)
            return cursor.fetchall()
        return [_car(r) for r in self._run("available_cars", work, deadline)]

    # --- the change feed ----------------------------------------------------------------------
    def change_state(self, deadline: Deadline | None = None) -> ChangeState:
        """The version counters and the newest inventory stamp, in one round trip."""
        def work(cursor):
            cursor.execute(CHANGE_STATE)
            return cursor.fetchone()
        row = self._run("change_state", work, deadline)
        return ChangeState(int(row[0]), int(row[1]), int(row[2]), row[3], row[4])

    def note_inventory_change(self, latest_stamp: Any, deadline: Deadline | None = None) -> None:
        """Move the inventory version for rows stamped up to `latest_stamp`, unless another
        process already did (rows written by plain SQL move it this way)."""
        def work(cursor):
            cursor.execute(self._sql(NOTE_INVENTORY_CHANGE), (latest_stamp, latest_stamp))
        self._run("note_inventory_change", work, deadline)

    def changed_cars(self, since: Any, overlap_seconds: float, deadline: Deadline | None = None) -> tuple[list[Car], Any]:
        """Cars (available or not) stamped after `since` (None: every car), and the newest stamp
        among them. MySQL stamps are times, taken before commit: re-read `overlap_seconds` back
        so a write that committed late is not missed (SQLite stamps are a sequence: no overlap)."""
        if since is None:
            since = 0 if self.backend == "sqlite" else datetime(1970, 1, 2)
        elif isinstance(since, datetime):
            since = since - timedelta(seconds=overlap_seconds)

        def work(cursor):
            cursor.execute(self._sql(CHANGED_CARS), (since,))
            return cursor.fetchall()
        rows = self._run("changed_cars", work, deadline)
        return [_car(r) for r in rows], max((r[10] for r in rows), default=None)

    def inventory_checksum(self, deadline: Deadline | None = None) -> tuple[int, int]:
        """(count, checksum) of the available cars."""
        def work(cursor):
            self._lend_crc32(cursor)
            cursor.execute(INVENTORY_CHECKSUM[self.backend])
            return cursor.fetchone()
        count, total = self._run("inventory_checksum", work, deadline)
        return int(count), int(total or 0)

    def bucket_checksums(self, deadline: Deadline | None = None) -> dict[int, tuple[int, int]]:
        """{bucket: (count, checksum)} of the available cars (buckets without any are left out)."""
        def work(cursor):
            self._lend_crc32(cursor)
            cursor.execute(BUCKET_CHECKSUMS[self.backend])
            return cursor.fetchall()
        return {int(b): (int(count), int(total)) for b, count, total in self._run("bucket_checksums", work, deadline)}

    def cars_in_buckets(self, buckets: Sequence[int], deadline: Deadline | None = None) -> list[Car]:
        """The available cars of these reconciliation buckets."""
        def work(cursor):
            self._lend_crc32(cursor)
            cursor.execute(self._sql(CARS_IN_BUCKETS + "(" + ", ".join(["%s"] * len(buckets)) + ")"), list(buckets))
            return cursor.fetchall()
        return [_car(r) for r in self._run("cars_in_buckets", work, deadline)] if buckets else []

    def move_inventory_version(self, seen: int, deadline: Deadline | None = None) -> int:
        """Move the inventory version past `seen` unless it moved already; the version now."""
        def work(cursor):
            cursor.execute(self._sql(MOVE_INVENTORY_VERSION), (seen,))
            cursor.execute(INVENTORY_VERSION)
            return int(cursor.fetchone()[0])
        return self._run("move_inventory_version", work, deadline)

    def _lend_crc32(self, cursor) -> None:
        if self.backend == "sqlite":  # per call: cheap, and every thread has its own connection
            cursor.connection.create_function("CRC32", 1, _sqlite_crc32, deterministic=True)

    def request_reload(self, deadline: Deadline | None = None) -> int:
        """Ask every process for a full inventory reload (InvalidateCache); the new inventory version."""
        def work(cursor):
            for statement in REQUEST_RELOAD:
                cursor.execute(statement)
            cursor.execute(INVENTORY_VERSION)
            return int(cursor.fetchone()[0])
        return self._run("request_reload", lambda cursor: self._transaction(cursor, work, write=True), deadline)

    def config_overrides(self, deadline: Deadline | None = None) -> tuple[int, dict[str, Any]]:
        """(configuration version, {key path: value}) read in one transaction."""
        def read(cursor):
            cursor.execute(CONFIG_VERSION)
            version = int(cursor.fetchone()[0])
            cursor.execute(CONFIG_OVERRIDES)
            return version, {key: json.loads(value) for key, value in cursor.fetchall()}
        return self._run("config_overrides", lambda cursor: self._transaction(cursor, read), deadline)

    def write_config(self, changed_by: str, decide: Callable[[dict[str, Any]], Mapping[str, tuple[Any, Any]]],
                     deadline: Deadline | None = None) -> tuple[int, dict[str, Any]]:
        """Change configuration overrides atomically. `decide(current overrides)` returns the
        keys to write, each as (value in effect before, new value), validated by the caller
        against the current overrides read under the lock; each is stored with the value it
        replaces and logged in config_history under one new version. Returns (version,
        overrides now stored); the version moves only on change."""
        def write(cursor):
            cursor.execute(LOCK_CONFIG[self.backend])
            version = int(cursor.fetchone()[0])
            cursor.execute(CONFIG_OVERRIDES)
            stored = {key: json.loads(value) for key, value in cursor.fetchall()}
            changes = decide(dict(stored))
            if not changes:
                return version, stored
            version += 1
            now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            for key, (previous, value) in changes.items():
                old, new = json.dumps(previous), json.dumps(value)
                cursor.execute(self._sql(DELETE_OVERRIDE), (key,))
                cursor.execute(self._sql(PUT_OVERRIDE), (key, new, version, now, changed_by, old))
                cursor.execute(self._sql(ADD_HISTORY), (version, key, old, new, now, changed_by))
                stored[key] = value
            cursor.execute(self._sql(SET_CONFIG_VERSION), (version,))
            return version, stored
        return self._run("write_config", lambda cursor: self._transaction(cursor, write, write=True), deadline)

    def config_history(self, key_prefix: str = "", limit: int = 100,
                       deadline: Deadline | None = None) -> list[ConfigChange]:
        """The newest configuration changes first, optionally of the keys under `key_prefix`."""
        def work(cursor):
            cursor.execute(self._sql(CONFIG_HISTORY), (len(key_prefix), key_prefix, limit))
            return cursor.fetchall()
        return [ConfigChange(version=int(r[0]), key=r[1], old=None if r[2] is None else json.loads(r[2]),
                             new=None if r[3] is None else json.loads(r[3]), changed_at=_utc(r[4]),
                             changed_by=r[5]) for r in self._run("config_history", work, deadline)]

    def clear_config(self) -> None:
        """Remove every configuration override and its history (a fresh deployment, tests)."""
        def work(cursor):
            cursor.execute("DELETE FROM config_overrides")
            cursor.execute("DELETE FROM config_history")
            cursor.execute("UPDATE change_versions SET config_version = config_version + 1 WHERE id = 1")
        self._run("clear_config", work, None)

