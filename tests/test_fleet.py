"""The fleet: MariaDB, Redis (or none) and two server instances of two processes each on two
loopback ports, called through fresh round_robin channels over both. A parameter change, a car
sold by plain SQL and InvalidateCache reach every worker; killing Redis fails no call.

Propagation times are printed (`pytest -s`), not asserted tightly: this machine is shared and
loaded. `make bench-fleet` prints them on a quiet machine."""
from __future__ import annotations

import threading
import time

import grpc
import pytest

import golden_data as golden
from conftest import free_port, load_golden
from fleet import Fleet, fee_of

# Generous: the bound asserted is what a loaded 2-core machine comfortably meets; the issue's
# goals (1 s for a parameter, 2 s for a sold car) are printed and measured by bench_fleet.
LIMIT_SECONDS = 15.0


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "polling"])
def test_changes_reach_every_worker_of_every_instance(with_redis, mysql_environ, request, capsys):
    environ = dict(mysql_environ)
    redis = request.getfixturevalue("redis_server") if with_redis else None
    if redis:
        environ["TRADEUP_REDIS_URL"] = redis.url
    fleet = Fleet(environ, [free_port(), free_port()], golden.customer_with_offers(), processes=2)
    fleet.start()
    measured = {}
    try:
        before = fleet.call()
        assert fee_of(before) == pytest.approx(0.04)

        # 1. A parameter changed through one instance: every worker prices with it.
        with fleet.admin(0) as admin:
            started = time.monotonic()
            admin.update_business_parameters({"fees": {"service_fee_pct": 0.02}}, changed_by="fleet-test")
        version = before.summary.config_version + 1
        seconds, calls = fleet.propagation(
            lambda r: r.summary.config_version >= version and fee_of(r) == pytest.approx(0.02), started)
        measured["parameter"] = seconds
        assert seconds < LIMIT_SECONDS and calls >= 100

        # 2. A car sold in the database by plain SQL: no worker offers it.
        top = fleet.call()
        sold = top.groups[0].offers[0].car_id if top.groups[0].offers else \
            next(o for g in top.groups for o in g.offers).car_id
        import pymysql
        from server.config import load_settings
        params = load_settings(environ).database.mysql_params()
        with pymysql.connect(**params, autocommit=True) as connection:
            started = time.monotonic()
            connection.cursor().execute("UPDATE inventory SET available = 0 WHERE car_id = %s", (sold,))
        seconds, _ = fleet.propagation(
            lambda r: r.summary.inventory_version > top.summary.inventory_version
            and sold not in {o.car_id for g in r.groups for o in g.offers}, started)
        measured["sold car"] = seconds
        assert seconds < LIMIT_SECONDS

        # 3. InvalidateCache through the other instance: every worker reloads.
        with fleet.admin(1) as admin:
            started = time.monotonic()
            admin.invalidate_cache()
            reloaded = admin.status().inventory_version
        seconds, _ = fleet.propagation(lambda r: r.summary.inventory_version >= reloaded, started)
        measured["invalidate"] = seconds
        assert seconds < LIMIT_SECONDS

        # 4. Redis killed under load: no call fails, and changes still arrive by polling.
        failures, done = [], threading.Event()

        def keep_calling():
            while not done.is_set():
                try:
                    fleet.call()
                except grpc.RpcError as err:
                    failures.append(err.code())

        caller = threading.Thread(target=keep_calling)
        caller.start()
        try:
            if redis:
                redis.kill()
            with fleet.admin(1) as admin:
                started = time.monotonic()
                admin.update_business_parameters({"fees": {"service_fee_pct": 0.03}})
            seconds, _ = fleet.propagation(lambda r: fee_of(r) == pytest.approx(0.03), started)
            measured["parameter, Redis killed" if redis else "parameter, again"] = seconds
        finally:
            done.set()
            caller.join(60)
        assert failures == []
        assert seconds < LIMIT_SECONDS
    finally:
        fleet.stop()
        with capsys.disabled():
            print(f"\nfleet propagation ({'Redis' if redis else 'polling'}; loaded machine): "
                  + ", ".join(f"{name} {value * 1e3:.0f} ms" for name, value in measured.items()))


def test_the_embedded_default_needs_no_redis_to_agree_across_processes(tmp_path):
    """What went wrong before: TRADEUP_PROCESSES=2 on the embedded SQLite file, a parameter
    changed through one process, and calls on fresh connections priced by either."""
    environ = {"TRADEUP_SQLITE_PATH": str(tmp_path / "embedded.db")}
    load_golden(environ)
    fleet = Fleet(environ, [free_port()], golden.customer_with_offers(), processes=2)
    fleet.start()
    try:
        with fleet.admin(0) as admin:
            started = time.monotonic()
            admin.update_business_parameters({"fees": {"service_fee_pct": 0.02}})
        seconds, calls = fleet.propagation(lambda r: fee_of(r) == pytest.approx(0.02), started, consecutive=60)
        assert seconds < LIMIT_SECONDS
        with fleet.admin(0) as admin:
            assert admin.status().redis_state == "off"
    finally:
        fleet.stop()
