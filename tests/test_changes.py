"""The change feed: configuration from the database, incremental inventory refresh, fleet-wide
invalidation and Redis, with two servers (each its own pool, snapshot and settings, as two
processes have) on one real database."""
from __future__ import annotations

import dataclasses
import random
import time
import urllib.request

import grpc
import pytest

import golden_data as golden
from conftest import BACKENDS, database_environ, free_port, load_golden, start_server
from server.data import demo
from server.data.inventory import InventorySnapshot
from server.services.changefeed import CONFIG, INVENTORY, Change

FEE = "business.fees.service_fee_pct"
CUSTOMER = golden.customer_with_offers()  # the fee and the sold car are read off its first offer


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    """Poll until condition() is truthy (generous limit: the machine may be loaded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout} s"
            return value
        time.sleep(interval)


# --- the snapshot, incrementally -------------------------------------------------------------------
def _columns(snapshot):
    return (snapshot.car_ids, list(snapshot.years), list(snapshot.prices), list(snapshot.kilometers),
            [snapshot.by_id[car_id].region for car_id in snapshot.car_ids])


def _check(following, expected_cars):
    reference = InventorySnapshot(expected_cars, 0.0)
    assert _columns(following) == _columns(reference)
    assert all(following.region_codes[following.by_id[i].region] == code
               for i, code in zip(following.car_ids, following.regions))
    by_id = sorted(zip(following.car_ids, following.ranks))
    assert all(a[1] < b[1] for a, b in zip(by_id, by_id[1:])), "ranks must order cars by car_id"
    assert all(following.row_of[car_id] == row for row, car_id in enumerate(following.car_ids))


@pytest.mark.parametrize("seed", range(6))
def test_applying_changed_rows_equals_a_full_build(seed):
    rng = random.Random(seed)
    cars = demo.demo_cars(600)
    snapshot = InventorySnapshot([c for c in cars if c.available], 0.0)
    truth = {c.car_id: c for c in cars}
    for step in range(4):
        changed = []
        for car in rng.sample(list(truth.values()), rng.randint(1, 60)):
            roll = rng.random()
            if roll < 0.3:
                car = dataclasses.replace(car, available=not car.available)
            elif roll < 0.6:
                car = dataclasses.replace(car, regular_price=round(car.regular_price * rng.uniform(0.8, 1.2), 2),
                                          promotion_price=None)
            elif roll < 0.8:
                car = dataclasses.replace(car, car_id=f"{car.car_id}-{step}", region=f"new-{rng.randint(0, 3)}",
                                          available=True)
            else:
                car = dataclasses.replace(car, kilometers=car.kilometers + 1)
            changed.append(car)
            truth[car.car_id] = car
        changed += changed[:3]  # rows read twice (the overlap window) change nothing more
        snapshot, ids = snapshot.apply(changed, 0.0, step + 1, None)
        assert snapshot.version == step + 1 and set(ids) <= {c.car_id for c in changed}
        _check(snapshot, [c for c in truth.values() if c.available])
        assert snapshot.apply(changed, 0.0, step + 1, None)[1] == []  # idempotent


def test_new_ids_between_close_neighbours_rebuild_the_ranks():
    cars = [c for c in demo.demo_cars(50) if c.available]
    snapshot = InventorySnapshot(cars, 0.0)
    first, second = sorted(c.car_id for c in cars)[:2]
    extra = []
    for k in range(40):  # each new id sorts just before the previous one: the gap halves each time
        extra.append(dataclasses.replace(cars[0], car_id=first + "~" * (40 - k), available=True))
        snapshot, _ = snapshot.apply(extra[-1:], 0.0, k, None)
    _check(snapshot, cars + extra)
    assert second in snapshot.row_of


# --- two servers on one database -------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def fleet_database(request, tmp_path):
    """A database of its own for sqlite; for mysql the shared test database, restored after."""
    environ = database_environ(request.param, request, tmp_path)
    load_golden(environ)
    yield environ
    load_golden(environ)  # undo sold cars and stored configuration


def start_pair(environ, **extra):
    return [start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2, **extra) for _ in range(2)]


def stop_all(servers):
    for server in servers:
        server.stop()


def fee_of(response) -> float:
    offer = next(o for g in response.groups for o in g.offers)
    return offer.service_fee_amount / golden.inventory()[offer.car_id]["car_price"]


def test_a_parameter_change_reaches_the_other_process(fleet_database):
    first, second = servers = start_pair(fleet_database)
    heard = []
    second.app.changes.subscribe(heard.append)
    try:
        before = second.client.generate_offers(customer_id=CUSTOMER, max_offers=1)
        assert fee_of(before) == pytest.approx(0.04)
        first.client.update_business_parameters({"fees": {"service_fee_pct": 0.02}}, changed_by="ops")
        after = wait_for(lambda: (r := second.client.generate_offers(customer_id=CUSTOMER, max_offers=1))
                         .summary.config_version > before.summary.config_version and r)
        assert fee_of(after) == pytest.approx(0.02)
        assert Change(CONFIG, after.summary.config_version) in heard
        response = second.client.admin.GetConfig(
            __import__("protos.tradeup.v1.admin_pb2", fromlist=["GetConfigRequest"]).GetConfigRequest(),
            metadata=second.client._admin_metadata())
        assert response.sources[FEE] == "database" and response.sources["business.fees.cxa_pct"] == "default"
        assert response.config_version == after.summary.config_version
        # The history is the database's: either process shows it.
        (change,) = second.client.config_history(key_prefix="business.fees.").changes
        assert (change.key, change.changed_by, change.version) == (FEE, "ops", after.summary.config_version)
        assert second.client.config_history(key_prefix="business.terms").changes == []
    finally:
        stop_all(servers)


def test_cars_changed_by_plain_sql_leave_every_process(fleet_database):
    servers = start_pair(fleet_database)
    repository = servers[0].app.repository
    heard = []
    servers[1].app.changes.subscribe(heard.append)
    try:
        response = servers[1].client.generate_offers(customer_id=CUSTOMER, max_offers=1)
        sold = response.groups[0].offers[0].car_id if response.groups[0].offers else \
            next(o for g in response.groups for o in g.offers).car_id
        version = response.summary.inventory_version
        with repository.database.cursor() as cursor:  # another system, not our code, writes the row
            cursor.execute(repository._sql("UPDATE inventory SET available = 0 WHERE car_id = %s"), (sold,))
        for server in servers:
            fresh = wait_for(lambda: (r := server.client.generate_offers(customer_id=CUSTOMER))
                             .summary.inventory_version > version and r)
            assert sold not in {o.car_id for g in fresh.groups for o in g.offers}
            assert sold not in server.app.inventory.current().row_of
        # Both processes saw one change: one version step, not one per process.
        versions = {s.client.status().inventory_version for s in servers}
        assert versions == {version + 1}
        # A subscriber inside the process is told which car changed, under which version.
        assert Change(INVENTORY, version + 1, (sold,)) in heard
        # Our own writes move the version too, and a repriced car is priced at its new price.
        car = next(c for c in golden.cars() if c.car_id == sold)
        repository.put_cars([dataclasses.replace(car, regular_price=car.regular_price + 1000, promotion_price=None)])
        for server in servers:
            wait_for(lambda: server.app.inventory.current().by_id.get(sold) is not None)
            assert server.app.inventory.current().by_id[sold].price == car.regular_price + 1000
    finally:
        stop_all(servers)


def test_invalidate_cache_reloads_every_process(fleet_database):
    first, second = servers = start_pair(fleet_database)
    try:
        loaded = second.app.inventory.current().loaded_at
        first.client.invalidate_cache()
        version = first.client.status().inventory_version
        wait_for(lambda: second.app.inventory.current() is not None
                 and second.app.inventory.current().loaded_at > loaded)
        assert second.client.status().inventory_version == version
        assert second.client.status().inventory_cars == len(golden.inventory())
    finally:
        stop_all(servers)


def test_an_invalid_configuration_written_around_the_service_is_refused(fleet_database, caplog):
    (server,) = servers = [start_server(fleet_database, TRADEUP_CHANGE_POLL_SECONDS=0.1)]
    repository = server.app.repository
    try:
        with repository.database.cursor() as cursor:
            cursor.execute(repository._sql("INSERT INTO config_overrides (key_path, value_json, version, changed_at, "
                                           "changed_by) VALUES (%s, %s, %s, %s, %s)"),
                           ("business.fees.cxa_pct", "3", 99, "2026-01-01 00:00:00", "manual"))
            cursor.execute("UPDATE change_versions SET config_version = config_version + 1 WHERE id = 1")
        wait_for(lambda: "is invalid" in caplog.text)
        assert server.app.settings.current.business.fees.cxa_pct == 0.04
        assert server.client.generate_offers(customer_id=CUSTOMER, max_offers=1).summary.total_offers > 0
    finally:
        stop_all(servers)


# --- Redis ---------------------------------------------------------------------------------------
@pytest.fixture
def sqlite_fleet(tmp_path):
    environ = {"TRADEUP_SQLITE_PATH": str(tmp_path / "fleet.db")}
    load_golden(environ)
    return environ


def redis_gauge(server) -> str:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics_port}/metrics", timeout=5).read().decode()
    return next(line for line in text.splitlines() if line.startswith("tradeup_redis_up "))


def test_redis_pushes_changes_and_its_death_fails_no_call(sqlite_fleet, redis_server):
    # A poll interval far longer than the test: only the push can deliver the change quickly.
    servers = [start_server(sqlite_fleet, TRADEUP_REDIS_URL=redis_server.url, TRADEUP_CHANGE_POLL_SECONDS=600)
               for _ in range(2)]
    first, second = servers
    try:
        wait_for(lambda: all(s.client.status().redis_state == "up" for s in servers))
        first.client.update_business_parameters({"fees": {"service_fee_pct": 0.03}})
        wait_for(lambda: second.app.settings.current.business.fees.service_fee_pct == 0.03, timeout=60)
        first.client.invalidate_cache()
        version = first.client.status().inventory_version
        wait_for(lambda: second.client.status().inventory_version == version, timeout=60)
        redis_server.kill()
        # No call fails because Redis is gone, the admin calls that publish included.
        assert first.client.update_business_parameters({"fees": {"cac_bonus": 100.0}})["fees"]["cac_bonus"] == 100
        for _ in range(20):
            assert second.client.generate_offers(customer_id=CUSTOMER, max_offers=1).summary.total_offers > 0
        wait_for(lambda: first.client.status().redis_state == "down")
    finally:
        stop_all(servers)


def test_without_redis_changes_still_arrive_by_polling(sqlite_fleet):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    servers = [start_server(sqlite_fleet, TRADEUP_REDIS_URL=dead, TRADEUP_CHANGE_POLL_SECONDS=0.2,
                            TRADEUP_METRICS_PORT=free_port(), TRADEUP_METRICS_HOST="127.0.0.1") for _ in range(2)]
    first, second = servers
    try:
        first.client.update_business_parameters({"fees": {"service_fee_pct": 0.025}})
        wait_for(lambda: second.app.settings.current.business.fees.service_fee_pct == 0.025)
        wait_for(lambda: second.client.status().redis_state == "down")
        assert redis_gauge(second) == "tradeup_redis_up 0.0"
    finally:
        stop_all(servers)


def test_the_rate_limit_is_one_bucket_across_processes(sqlite_fleet, redis_server):
    limits = dict(TRADEUP_REDIS_URL=redis_server.url, TRADEUP_RATE_LIMIT_PER_SECOND=0.01,
                  TRADEUP_RATE_LIMIT_BURST=3, TRADEUP_RATE_LIMIT_KEY="x-caller-id")
    servers = [start_server(sqlite_fleet, **limits) for _ in range(2)]
    caller = (("x-caller-id", "dealer-7"),)
    try:
        for server in (servers[0], servers[1], servers[0]):
            server.client.generate_offers(customer_id=CUSTOMER, max_offers=1, metadata=caller)
        with pytest.raises(grpc.RpcError) as err:  # the fourth call, whichever process takes it
            servers[1].client.generate_offers(customer_id=CUSTOMER, max_offers=1, metadata=caller)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Redis slow: the call does not wait for it (the local bucket decides), nor fail.
        redis_server.stall(8)
        started = time.monotonic()
        servers[0].client.generate_offers(customer_id=CUSTOMER, max_offers=1, metadata=caller)
        assert time.monotonic() - started < 6 and servers[0].client.status().redis_state == "down"
        redis_server.kill()
        # Redis down: each process limits on its own (its local bucket is still full); nothing fails.
        servers[1].client.generate_offers(customer_id=CUSTOMER, max_offers=1, metadata=caller)
        assert servers[1].client.status().redis_state == "down"
    finally:
        stop_all(servers)


def test_migrating_an_existing_inventory_adds_the_stamp(tmp_path):
    from server.app import open_repository
    from server.data import repository as sql
    from conftest import make_settings
    repository = open_repository(make_settings({"TRADEUP_SQLITE_PATH": str(tmp_path / "old.db")}))
    try:
        with repository.database.cursor() as cursor:  # the schema before the change feed
            for statement in sql.SCHEMA:
                cursor.execute(statement.format(id_type="VARCHAR(64)", suffix=""))
            cursor.execute("INSERT INTO inventory (car_id, brand, model, year, kilometers, regular_price) "
                           "VALUES ('OLD1', 'Kia', 'Rio', 2020, 1000, 200000)")
        repository.migrate()
        repository.migrate()  # idempotent
        before = repository.change_state()
        with repository.database.cursor() as cursor:
            cursor.execute("UPDATE inventory SET available = 0 WHERE car_id = 'OLD1'")
        after = repository.change_state()
        assert after.latest_stamp > (before.latest_stamp or 0)
        assert [c.car_id for c in repository.changed_cars(before.latest_stamp, 0)[0]] == ["OLD1"]
    finally:
        repository.database.close()
