"""Data-access benchmark (`make bench-db`): prefilter latency per request, median and p95.

For each backend (the embedded SQLite file and MariaDB) and each inventory size (the 4,000-car
demo and a 100,000-car one) it times:
  sql, cold      the SQL prefilter returning ids (every call goes to the database)
  sql, cached    the same through the prefilter-result cache (second pass over the same customers)
  snapshot       the in-memory match against the cached snapshot (the default mode)
  customer       the fresh customer lookup every request by id pays
and the one-off snapshot load. MariaDB: TRADEUP_TEST_MYSQL_URL, else a private server is started.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import free_port, make_settings  # noqa: E402
from engine_ext import load_kernel  # noqa: E402
from mariadb import MariaDBServer, binaries_available  # noqa: E402
from server.app import open_repository  # noqa: E402
from server.data import demo  # noqa: E402
from server.data.inventory import InventoryCache  # noqa: E402


def stats(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p95 = ordered[max(0, -(-95 * len(ordered) // 100) - 1)]
    return f"{statistics.median(ordered) * 1e3:8.3f} {p95 * 1e3:8.3f}"


def run(backend: str, environ: dict, sizes: list[int], customers: int) -> None:
    repository = open_repository(make_settings(environ))
    repository.migrate()
    people = demo.demo_customers(customers)
    kernel = load_kernel()
    for size in sizes:
        repository.delete_all()
        repository.put_cars(demo.demo_cars(size))
        repository.put_customers(people)
        cache = InventoryCache(repository, ttl_seconds=3600, prefilter_entries=100_000)
        started = time.perf_counter()
        snapshot = cache.snapshot()
        load = time.perf_counter() - started
        rows = {}
        for label, call in (
            ("sql, cold", lambda c: repository.prefilter_ids(c.current_car_price, c.current_car_year,
                                                             c.current_car_km, None, 500)),
            ("sql, cached", lambda c: cache.prefilter_sql(kernel, c, False, 500)),
            ("snapshot", lambda c: snapshot.match(kernel, c, False, 500)),
            ("customer", lambda c: repository.get_customer(c.customer_id)),
        ):
            if label == "sql, cached":
                for c in people:  # fill the cache first: this row is the warm pass
                    call(c)
            times = []
            for c in people:
                t = time.perf_counter()
                call(c)
                times.append(time.perf_counter() - t)
            rows[label] = stats(times)
        for label, figures in rows.items():
            print(f"{backend:8} {size:>8,} {label:12} {figures}")
        print(f"{backend:8} {size:>8,} {'snapshot load':12} {load * 1e3:8.1f} ms once per TTL ({len(snapshot):,} cars)")
    repository.database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="4000,100000", help="inventory sizes, comma-separated")
    parser.add_argument("--customers", type=int, default=300, help="customers timed per row")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'backend':8} {'cars':>8} {'path':12} {'p50 ms':>8} {'p95 ms':>8}   (prefilter limit 500)")
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", {"TRADEUP_SQLITE_PATH": f"{tmp}/bench.db"}, sizes, args.customers)
        url = os.environ.get("TRADEUP_TEST_MYSQL_URL")
        server = None
        if not url:
            if not binaries_available():
                print("mariadb   (skipped: mariadbd not installed and TRADEUP_TEST_MYSQL_URL not set)")
                return
            server = MariaDBServer(Path(tmp) / "mariadb", free_port())
            server.start()
            server.create_database("bench", "bench", "bench-password")
            url = f"mysql://bench:bench-password@127.0.0.1:{server.port}/bench"
        try:
            run("mariadb", {"TRADEUP_DATABASE_URL": url}, sizes, args.customers)
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
