"""All SQL of the service, parameterized: values are never formatted into a statement.

Statements are written with %s placeholders and run unchanged on MySQL/MariaDB (pymysql) and,
with ? placeholders, on the embedded SQLite file. Every call goes through the circuit breaker.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, TypeVar

from ..domain import Car, Customer
from ..errors import DeadlineExceeded, Unavailable
from .breaker import CircuitBreaker
from .database import MySQLDatabase, SQLiteDatabase

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
        region VARCHAR(64) NOT NULL DEFAULT ''
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
)
# `CREATE INDEX IF NOT EXISTS` is MariaDB and SQLite only: ask the catalogue first (MySQL too).
INDEX_EXISTS = {
    "mysql": "SELECT COUNT(*) FROM information_schema.statistics "
             "WHERE table_schema = DATABASE() AND table_name = %s AND index_name = %s",
    "sqlite": "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = %s AND name = %s",
}
ER_DUP_KEYNAME = 1061  # MySQL/MariaDB: another process created the index since we asked

_CUSTOMER_COLUMNS = ("customer_id, current_monthly_payment, outstanding_balance, current_car_price, "
                     "current_car_year, current_car_km, risk_profile_name, risk_profile_index, region")
_CAR_COLUMNS = "car_id, brand, model, year, kilometers, regular_price, promotion_price, region, color, available"

SELECT_ONE = "SELECT 1"
GET_CUSTOMER = f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE customer_id = %s"
PUT_CUSTOMER = f"REPLACE INTO customers ({_CUSTOMER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
PUT_CAR = f"REPLACE INTO inventory ({_CAR_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
SET_CAR_AVAILABLE = "UPDATE inventory SET available = %s WHERE car_id = %s"
AVAILABLE_CARS = (f"SELECT {_CAR_COLUMNS} FROM inventory WHERE available = 1 "
                  "ORDER BY year DESC, price DESC, car_id ASC")
_PREFILTER_WHERE = "WHERE available = 1 AND price > %s AND year >= %s AND kilometers < %s"
_PREFILTER_ORDER = " ORDER BY year DESC, price DESC, car_id ASC LIMIT %s"
PREFILTER = f"SELECT car_id FROM inventory {_PREFILTER_WHERE}{_PREFILTER_ORDER}"
PREFILTER_SAME_REGION = f"SELECT car_id FROM inventory {_PREFILTER_WHERE} AND region = %s{_PREFILTER_ORDER}"
EXPLAIN_PREFILTER = "EXPLAIN " + PREFILTER
COUNT_CARS = "SELECT COUNT(*) FROM inventory"
COUNT_CUSTOMERS = "SELECT COUNT(*) FROM customers"
DELETE_CARS = "DELETE FROM inventory"
DELETE_CUSTOMERS = "DELETE FROM customers"


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

    def _run(self, name: str, work: Callable[[Any], T], timeout: float | None) -> T:
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("deadline passed before the database call")

        def operation() -> T:
            started = time.perf_counter()
            with self.database.cursor(timeout) as cursor:
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
        def work(cursor):
            for statement in SCHEMA:
                cursor.execute(statement.format(id_type=_ID_TYPE[self.backend], suffix=_TABLE_SUFFIX[self.backend]))
            for name, table, columns in INDEXES:
                cursor.execute(self._sql(INDEX_EXISTS[self.backend]), (table, name))
                if cursor.fetchone()[0]:
                    continue
                try:
                    cursor.execute(f"CREATE INDEX {name} ON {table} {columns}")
                except Exception as exc:
                    if not (self.backend == "mysql" and exc.args and exc.args[0] == ER_DUP_KEYNAME):
                        raise
        self._run("migrate", work, None)

    def put_customers(self, customers: Iterable[Customer]) -> None:
        rows = [(c.customer_id, c.current_monthly_payment, c.outstanding_balance, c.current_car_price,
                 c.current_car_year, c.current_car_km, c.risk_profile_name, c.risk_profile_index, c.region)
                for c in customers]
        self._run("put_customers", lambda cursor: cursor.executemany(self._sql(PUT_CUSTOMER), rows), None)

    def put_cars(self, cars: Iterable[Car]) -> None:
        rows = [(c.car_id, c.brand, c.model, c.year, c.kilometers, c.regular_price, c.promotion_price,
                 c.region, c.color, int(c.available)) for c in cars]
        self._run("put_cars", lambda cursor: cursor.executemany(self._sql(PUT_CAR), rows), None)

    def set_car_available(self, car_id: str, available: bool) -> None:
        self._run("set_car_available",
                  lambda cursor: cursor.execute(self._sql(SET_CAR_AVAILABLE), (int(available), car_id)), None)

    def delete_all(self) -> None:
        def work(cursor):
            cursor.execute(DELETE_CARS)
            cursor.execute(DELETE_CUSTOMERS)
        self._run("delete_all", work, None)

    def counts(self) -> tuple[int, int]:
        """(cars, customers)."""
        def work(cursor):
            cursor.execute(COUNT_CARS)
            cars = cursor.fetchone()[0]
            cursor.execute(COUNT_CUSTOMERS)
            return int(cars), int(cursor.fetchone()[0])
        return self._run("counts", work, None)

    # --- the service's queries ----------------------------------------------------------------
    def ping(self, timeout: float | None = None) -> None:
        def work(cursor):
            cursor.execute(SELECT_ONE)
            cursor.fetchall()
        self._run("ping", work, timeout)

    def get_customer(self, customer_id: str, timeout: float | None = None) -> Customer | None:
        """Always read fresh: customers are never cached."""
        def work(cursor):
            cursor.execute(self._sql(GET_CUSTOMER), (customer_id,))
            return cursor.fetchone()
        row = self._run("get_customer", work, timeout)
        if row is None:
            return None
        return Customer(customer_id=row[0], current_monthly_payment=float(row[1]), outstanding_balance=float(row[2]),
                        current_car_price=float(row[3]), current_car_year=int(row[4]), current_car_km=int(row[5]),
                        risk_profile_name=row[6], risk_profile_index=int(row[7]), region=row[8] or "")

    def prefilter_ids(self, min_price: float, min_year: int, max_km: int, region: str | None, limit: int,
                      timeout: float | None = None) -> list[str]:
        """Stage 1 (SPEC §2): ids of the available cars that are logical trade-ups, in order."""
        def work(cursor):
            if region is None:
                cursor.execute(self._sql(PREFILTER), (min_price, min_year, max_km, limit))
            else:
                cursor.execute(self._sql(PREFILTER_SAME_REGION), (min_price, min_year, max_km, region, limit))
            return [row[0] for row in cursor.fetchall()]
        return self._run("prefilter", work, timeout)

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

    def available_cars(self, timeout: float | None = None) -> list[Car]:
        """Every available car, for the inventory snapshot."""
        def work(cursor):
            cursor.execute(AVAILABLE_CARS)
            return cursor.fetchall()
        return [Car(car_id=r[0], brand=r[1], model=r[2], year=int(r[3]), kilometers=int(r[4]),
                    regular_price=float(r[5]), promotion_price=None if r[6] is None else float(r[6]),
                    region=r[7] or "", color=r[8] or "", available=bool(r[9]))
                for r in self._run("available_cars", work, timeout)]

