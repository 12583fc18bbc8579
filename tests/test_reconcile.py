"""What the change feed's stamps cannot show reaches every cache and watcher: rows deleted by plain
SQL and MySQL transactions that commit after the overlap window (by reconciliation), reloads on
the request path after the TTL (told to the watchers), and the SQL prefilter cache, which must
never answer from rows of another snapshot while snapshots are replaced under load."""
from __future__ import annotations

import dataclasses
import os
import random
import threading
import time

import pymysql
import pytest

import golden_data as golden
from conftest import make_settings, start_server
from engine_ext import load_kernel
from protos.tradeup.v1 import offers_pb2 as pb
from server.app import open_repository
from server.data import demo
from server.data.inventory import InventoryCache, InventorySnapshot
from server.data.repository import RECONCILE_BUCKETS, car_bucket
from server.deadline import Deadline
from server.services.changefeed import INVENTORY, Change
from test_watch import A, Watch, offers_of, wait_for, watch_database  # noqa: F401 (a fixture)

RECONCILE = 0.5  # seconds between reconciliations in these tests
# Generous bounds for a loaded 2-core machine; without reconciliation these changes never arrive.
ARRIVES_WITHIN = 15.0


def plain_sql(repository, statement: str, *args) -> None:
    """Another system writes, not our code."""
    with repository.database.cursor() as cursor:
        cursor.execute(repository._sql(statement), args)


# --- checksums ------------------------------------------------------------------------------------
def test_carried_checksums_equal_computed_ones():
    rng = random.Random(3)
    cars = [c for c in demo.demo_cars(800) if c.available]
    snapshot = InventorySnapshot(cars, 0.0)
    snapshot.checksums()
    truth = {c.car_id: c for c in cars}
    for step in range(5):
        changed = [dataclasses.replace(c, available=rng.random() < 0.5, kilometers=c.kilometers + step)
                   for c in rng.sample(list(truth.values()), 40)]
        truth.update((c.car_id, c) for c in changed)
        snapshot, _ = snapshot.apply(changed, 0.0, step, None)
        assert snapshot.checksums() == InventorySnapshot([c for c in truth.values() if c.available], 0.0).checksums()


def test_the_database_computes_the_snapshots_checksums(repository):
    counts, sums = InventorySnapshot(repository.available_cars(), 0.0).checksums()
    assert repository.inventory_checksum() == (sum(counts), sum(sums)) and sum(counts) > 0
    assert repository.bucket_checksums() == {b: (counts[b], sums[b]) for b in range(RECONCILE_BUCKETS) if counts[b]}
    bucket = next(b for b in range(RECONCILE_BUCKETS) if counts[b])
    assert sorted(c.car_id for c in repository.cars_in_buckets([bucket])) == \
        sorted(c.car_id for c in repository.available_cars() if car_bucket(c.car_id) == bucket)


# --- the SQL prefilter cache under reloads ----------------------------------------------------------
def test_sql_prefilter_answers_from_its_own_snapshot_while_snapshots_change(watch_database):
    repository = open_repository(make_settings(watch_database))
    kernel = load_kernel(os.environ.get("TRADEUP_ENGINE", "compiled"))
    customer = next(c for c in golden.domain_customers()
                    if 100 <= len(repository.prefilter_ids(c.current_car_price, c.current_car_year,
                                                           c.current_car_km, None, 2000)) <= 1500)
    bounds = (customer.current_car_price, customer.current_car_year, customer.current_car_km, None, 2000)
    qualifying = repository.prefilter_ids(*bounds)  # the limit never cuts it: every answer is a subset
    toggled = random.Random(5).sample(qualifying, 40)
    steady = set(qualifying) - set(toggled)
    order = {car_id: k for k, car_id in enumerate(qualifying)}
    cache = InventoryCache(repository, ttl_seconds=0.3, prefilter_entries=100)  # reloads by TTL too
    stop = threading.Event()
    answers, errors = [0], []

    def read() -> None:
        while not stop.is_set():
            ids = cache.prefilter_sql(kernel, customer, False, 2000, Deadline.after(10)).car_ids
            # Whatever snapshot answered, it holds every steady car and only qualifying ones, in order.
            if not (steady <= set(ids) <= set(qualifying)) or [order[i] for i in ids] != sorted(order[i] for i in ids):
                errors.append(ids)
            answers[0] += 1

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        rng = random.Random(11)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and not errors:
            some = rng.sample(toggled, 10)
            plain_sql(repository, "UPDATE inventory SET available = 1 - available WHERE car_id IN ("
                      + ", ".join(["%s"] * len(some)) + ")", *some)
            if rng.random() < 0.2:
                cache.invalidate()
            for _ in range(4):  # applies the change, then re-reads the recent rows: same rows, new objects
                cache.refresh(repository.change_state())
                time.sleep(rng.uniform(0, 0.005))
    finally:
        stop.set()
        for thread in readers:
            thread.join(timeout=30)
    assert not errors, f"{len(errors)} answers held cars of another snapshot, e.g. {errors[0][:5]}"
    assert answers[0] > 50
    cache.invalidate()  # at rest: exactly the database's answer
    assert cache.prefilter_sql(kernel, customer, False, 2000).car_ids == repository.prefilter_ids(*bounds)
    repository.database.close()


# --- reconciliation and notification on real servers ------------------------------------------------
def removed_ids(message: pb.WatchOffersResponse) -> set[str]:
    return {offer.car_id for offer in message.removed}


def test_a_car_deleted_by_plain_sql_leaves_every_process_and_the_watchers_hear_it(watch_database):
    servers = [start_server(watch_database, TRADEUP_CHANGE_POLL_SECONDS=0.2, TRADEUP_RECONCILE_SECONDS=RECONCILE)
               for _ in range(2)]
    first, second = servers
    heard = []
    second.app.changes.subscribe(heard.append)
    watch = Watch(second.client, customer_id=A)
    try:
        victim = watch.live.offers()[0].car_id
        version = watch.live.summary.inventory_version
        plain_sql(first.app.repository, "DELETE FROM inventory WHERE car_id = %s", victim)
        message = watch.next(timeout=ARRIVES_WITHIN)
        assert message.reason == pb.WATCH_REASON_INVENTORY and victim in removed_ids(message)
        assert watch.differs() is None  # the delta applied equals a fresh answer, without the car
        assert Change(INVENTORY, message.summary.inventory_version, (victim,)) in heard
        for server in servers:
            wait_for(lambda: victim not in server.app.inventory.current().by_id, timeout=ARRIVES_WITHIN)
            assert victim not in {o.car_id for o in offers_of(server.client.generate_offers(customer_id=A))}
        # Whichever process found it first moved the version, once for both.
        assert {s.client.status().inventory_version for s in servers} == {version + 1}
    finally:
        watch.close()
        for server in servers:
            server.stop()


@pytest.mark.parametrize("watch_database", ["mysql"], indirect=True)
def test_a_transaction_committed_after_the_overlap_window_is_seen(watch_database):
    overlap = 0.2
    server = start_server(watch_database, TRADEUP_CHANGE_POLL_SECONDS=0.1, TRADEUP_RECONCILE_SECONDS=RECONCILE,
                          TRADEUP_CHANGE_OVERLAP_SECONDS=overlap)
    repository = server.app.repository
    settings = server.app.settings.current.database.mysql_params()
    late = pymysql.connect(host=settings["host"], port=settings["port"], user=settings["user"],
                           password=settings["password"], database=settings["database"], autocommit=False)
    try:
        offered = [o.car_id for o in offers_of(server.client.generate_offers(customer_id=A))]
        victim, other = offered[0], next(c for c in offered if c != offered[0])
        with late.cursor() as cursor:  # stamped now, committed later
            cursor.execute("UPDATE inventory SET available = 0 WHERE car_id = %s", (victim,))
        time.sleep(overlap * 2)
        # A later write the feed applies: its stamp moves the feed's mark past the open one's.
        plain_sql(repository, "UPDATE inventory SET kilometers = kilometers + 1 WHERE car_id = %s", other)
        km = golden.inventory()[other]["kilometers"] + 1
        wait_for(lambda: server.app.inventory.current().by_id[other].kilometers == km)
        time.sleep(overlap * 3)  # and the feed's re-reads of recent stamps are over
        late.commit()
        wait_for(lambda: victim not in server.app.inventory.current().by_id, timeout=ARRIVES_WITHIN)
        assert victim not in {o.car_id for o in offers_of(server.client.generate_offers(customer_id=A))}
    finally:
        late.close()
        server.stop()


def test_a_reload_after_the_ttl_on_the_request_path_tells_the_watchers(watch_database):
    # The feed never looks (one poll a minute, no reconciliation): only the request path reloads.
    server = start_server(watch_database, TRADEUP_CHANGE_POLL_SECONDS=60, TRADEUP_RECONCILE_SECONDS=3600,
                          TRADEUP_INVENTORY_TTL_SECONDS=1.0)
    watch = Watch(server.client, customer_id=A)
    try:
        victim = watch.live.offers()[0].car_id
        plain_sql(server.app.repository, "UPDATE inventory SET available = 0 WHERE car_id = %s", victim)
        wait_for(lambda: server.app.inventory.current() is None)  # expired
        other = next(c.customer_id for c in golden.domain_customers() if c.customer_id != A)
        server.client.generate_offers(customer_id=other, max_offers=1)  # reloads
        message = watch.next(timeout=ARRIVES_WITHIN)
        assert message.reason == pb.WATCH_REASON_INVENTORY and victim in removed_ids(message)
        assert watch.differs() is None
    finally:
        watch.close()
        server.stop()
