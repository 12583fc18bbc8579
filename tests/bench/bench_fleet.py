"""Fleet figures (`make bench-fleet`): how fast changes reach every worker, what an incremental
inventory refresh costs, and what Redis costs per call. Everything is measured in this run:

1. incremental refresh at --cars cars (SQLite, 100 cars changed by plain SQL): the change feed's
   read of the changed rows plus the snapshot update, against a full reload, and the snapshot
   update alone;
2. propagation to every worker of two instances × 2 processes on MariaDB: a parameter change
   and a car sold by plain SQL, with polling only and with Redis (median of --repeats);
3. GenerateOffers (top 50) throughput at concurrency 16 with ghz on one instance of 2 processes,
   rate limiting on, with Redis (shared buckets, one Lua call per request) and without.

Quick check of the tooling: python -m tests.bench.bench_fleet --cars 5000 --repeats 1 --requests 50
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port, make_settings  # noqa: E402
from fleet import Fleet  # noqa: E402
from tests.bench.loadtest import Server, find_ghz, ghz, seed, start_mariadb, summarize  # noqa: E402
from redis_server import RedisServer  # noqa: E402


def incremental(cars: int, changed: int, workdir: Path) -> None:
    from server.app import open_repository
    from server.data import demo
    from server.data.inventory import InventoryCache, InventorySnapshot
    settings = make_settings({"TRADEUP_SQLITE_PATH": str(workdir / "bench.db")})
    repository = open_repository(settings)
    repository.migrate()
    repository.put_cars(demo.demo_cars(cars))
    cache = InventoryCache(repository, 3600, 10)
    started = time.perf_counter()
    snapshot = cache.snapshot()
    full = time.perf_counter() - started
    rng = random.Random(7)
    picked = rng.sample(snapshot.car_ids, changed)
    with repository.database.cursor() as cursor:  # half sold, half repriced, by plain SQL
        for k, car_id in enumerate(picked):
            sql = "UPDATE inventory SET available = 0 WHERE car_id = ?" if k % 2 else \
                "UPDATE inventory SET regular_price = regular_price + 1000, promotion_price = NULL WHERE car_id = ?"
            cursor.execute(sql, (car_id,))
    state = repository.change_state()
    started = time.perf_counter()
    version, ids = cache.refresh(state)
    refresh = time.perf_counter() - started
    rows = [dataclasses.replace(snapshot.by_id[i], regular_price=snapshot.by_id[i].regular_price + 1)
            for i in picked]
    apply = min(_timed(lambda: snapshot.apply(rows, 0.0, 1, None)) for _ in range(5))
    rebuild = _timed(lambda: InventorySnapshot(list(snapshot.by_id.values()), 0.0))
    print(f"incremental refresh, {changed} of {cars:,} cars changed by plain SQL (SQLite):")
    print(f"  full reload {full * 1e3:8.1f} ms | change feed refresh {refresh * 1e3:6.1f} ms "
          f"({len(ids)} cars; {full / refresh:.0f}x less) | snapshot update alone {apply * 1e3:5.1f} ms, "
          f"full rebuild from memory {rebuild * 1e3:6.1f} ms")
    repository.database.close()


def _timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def propagation(url: str, redis_url: str | None, repeats: int) -> dict[str, float]:
    import pymysql
    from server.config import load_settings
    environ = {"TRADEUP_DATABASE_URL": url}
    if redis_url:
        environ["TRADEUP_REDIS_URL"] = redis_url
    fleet = Fleet(environ, [free_port(), free_port()], processes=2, customer_id="C00001")
    fleet.start()
    figures: dict[str, list[float]] = {"parameter": [], "sold car": []}
    try:
        params = load_settings(environ).database.mysql_params()
        for k in range(repeats):
            version = fleet.call().summary.config_version
            with fleet.admin(k % 2) as admin:
                started = time.monotonic()
                # A value not stored before, so that the version moves.
                admin.update_business_parameters({"fees": {"cac_bonus": round(random.uniform(1, 5000), 2)}})
            figures["parameter"].append(fleet.propagation(lambda r: r.summary.config_version > version, started)[0])
            top = fleet.call()
            sold = next(o for g in top.groups for o in g.offers).car_id
            with pymysql.connect(**params, autocommit=True) as connection:
                started = time.monotonic()
                connection.cursor().execute("UPDATE inventory SET available = 0 WHERE car_id = %s", (sold,))
            figures["sold car"].append(fleet.propagation(
                lambda r: sold not in {o.car_id for g in r.groups for o in g.offers}
                and r.summary.inventory_version > top.summary.inventory_version, started)[0])
    finally:
        fleet.stop()
    return {name: statistics.median(values) for name, values in figures.items()}


def throughput(binary: str, url: str, redis_url: str | None, requests: int, workdir: Path) -> dict:
    os.environ.update({"TRADEUP_RATE_LIMIT_PER_SECOND": "1000000", "TRADEUP_RATE_LIMIT_BURST": "1000000"})
    if redis_url:
        os.environ["TRADEUP_REDIS_URL"] = redis_url
    server = Server(url, 2, workdir)
    try:
        data = '{"customer_id":"{{printf `C%05d` (randomInt 1 5001)}}","options":{"max_offers":50}}'
        method = "tradeup.v1.OfferService/GenerateOffers"
        ghz(binary, server.target, method, data, max(requests // 10, 20), 8, workdir / "warmup.json")
        return summarize(ghz(binary, server.target, method, data, requests, 16, workdir / "run.json"))
    finally:
        server.stop()
        for name in ("TRADEUP_RATE_LIMIT_PER_SECOND", "TRADEUP_RATE_LIMIT_BURST", "TRADEUP_REDIS_URL"):
            os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=100_000, help="inventory size of the refresh figure")
    parser.add_argument("--changed", type=int, default=100, help="cars changed for the refresh figure")
    parser.add_argument("--repeats", type=int, default=5, help="propagation measurements per mode")
    parser.add_argument("--requests", type=int, default=3000, help="ghz calls per throughput run")
    args = parser.parse_args()
    binary = find_ghz()
    with tempfile.TemporaryDirectory(prefix="tradeup-bench-fleet-") as tmp:
        workdir = Path(tmp)
        incremental(args.cars, args.changed, workdir)
        url, mariadb = start_mariadb(workdir)
        redis = RedisServer(workdir / "redis", free_port())
        redis.start()
        try:
            seed(url, 4000)
            print("\npropagation to every worker (2 instances x 2 processes, MariaDB; median of "
                  f"{args.repeats}; client-observed, fresh connections):")
            for name, redis_url in (("polling", None), ("Redis", redis.url)):
                figures = propagation(url, redis_url, args.repeats)
                print(f"  {name:8} " + " | ".join(f"{k} {v * 1e3:6.0f} ms" for k, v in figures.items()))
            print(f"\nGenerateOffers top 50, c=16, {args.requests} calls, 2 processes, rate limit on:")
            rows = {}
            for name, redis_url in (("local", None), ("Redis", redis.url)):
                rows[name] = throughput(binary, url, redis_url, args.requests, workdir)
                r = rows[name]
                print(f"  {name:8} {r['rps']:8.0f} req/s | p50 {r['p50']:6.1f} ms | p99 {r['p99']:6.1f} ms | "
                      f"errors {r['errors']}")
            print(f"  Redis on / off: {rows['Redis']['rps'] / rows['local']['rps']:.3f}")
        finally:
            redis.stop()
            if mariadb:
                mariadb.stop()


if __name__ == "__main__":
    main()
