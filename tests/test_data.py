"""Data layer on both backends: prefilter exactness, index use, injection, caches, breaker."""
from __future__ import annotations

from dataclasses import replace

import pytest

import golden_data as golden
from engine_ext import load_kernel
from server.data.breaker import CircuitBreaker
from server.data.inventory import InventoryCache
from server.errors import Unavailable

INJECTIONS = ("' OR '1'='1", "C0001'; DROP TABLE inventory; --", "\" OR 1=1 --", "C0001' UNION SELECT car_id FROM inventory --",
              "%", "_", "\\'; DELETE FROM customers; --", "' OR sleep(5) --", "\x00", "Robert'); DROP TABLE customers;--")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def golden_customer(record):
    return golden.domain_customers()[[c.customer_id for c in golden.domain_customers()].index(record["customer_id"])]


def test_migration_is_idempotent(repository):
    before = repository.counts()
    repository.migrate()
    repository.migrate()
    assert repository.counts() == before == (len(golden.inventory()), len(golden.customers()))


def test_sql_prefilter_matches_golden(repository):
    for record in golden.offers():
        c = golden.customers()[record["customer_id"]]
        ids = repository.prefilter_ids(c["current_car_price"], c["current_car_year"], c["current_car_km"], None, 500)
        assert ids == record["cars"], record["customer_id"]


@pytest.mark.parametrize("implementation", ["compiled", "python"])
def test_snapshot_prefilter_matches_golden(repository, implementation):
    cache = InventoryCache(repository, ttl_seconds=60, prefilter_entries=100)
    snapshot = cache.snapshot()
    kernel = load_kernel(implementation)
    customers = {c.customer_id: c for c in golden.domain_customers()}
    for record in golden.offers():
        selection = snapshot.match(kernel, customers[record["customer_id"]], False, 500)
        assert selection.car_ids == record["cars"], record["customer_id"]
        assert list(selection.prices) == [golden.inventory()[i]["car_price"] for i in record["cars"]]


def test_sql_mode_and_limits(repository):
    cache = InventoryCache(repository, ttl_seconds=60, prefilter_entries=100)
    customers = {c.customer_id: c for c in golden.domain_customers()}
    record = max(golden.offers(), key=lambda r: len(r["cars"]))
    customer = customers[record["customer_id"]]
    assert cache.prefilter_sql(load_kernel(), customer, False, 500).car_ids == record["cars"]
    assert cache.prefilter_sql(load_kernel(), customer, False, 17).car_ids == record["cars"][:17]
    wide = replace(customer, current_car_price=1.0, current_car_year=1990, current_car_km=10 ** 7)
    assert len(cache.prefilter_sql(load_kernel(), wide, False, 2000).car_ids) == 2000
    assert cache.snapshot().match(load_kernel(), wide, False, 2000).car_ids == cache.prefilter_sql(load_kernel(), wide, False, 2000).car_ids


def test_prefilter_uses_the_index(repository):
    plan = repository.explain_prefilter()
    if repository.backend == "mysql":
        assert plan and all(row["type"] != "ALL" for row in plan), plan
        assert plan[0]["key"] == "idx_inventory_trade_up", plan
    else:
        details = " ".join(row["detail"] for row in plan)
        assert "idx_inventory_trade_up" in details and "SCAN inventory" not in details.replace(
            "SCAN inventory USING", "USING"), details


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_inert(repository, text):
    before = repository.counts()
    assert repository.get_customer(text) is None
    assert repository.prefilter_ids(100000.0, 2015, 100000, text, 500) == []
    assert repository.counts() == before


def test_customer_changes_are_visible_on_the_next_call(repository):
    customer = replace(golden.domain_customers()[0], customer_id="FRESH-1", current_monthly_payment=4321.0)
    repository.put_customers([customer])
    assert repository.get_customer("FRESH-1").current_monthly_payment == 4321.0
    repository.put_customers([replace(customer, current_monthly_payment=9876.5)])
    assert repository.get_customer("FRESH-1").current_monthly_payment == 9876.5


def test_inventory_cache_ttl_and_invalidation(repository):
    clock = FakeClock()
    cache = InventoryCache(repository, ttl_seconds=100, prefilter_entries=10, clock=clock)
    first = cache.snapshot()
    assert cache.snapshot() is first and (cache.hits, cache.misses) == (1, 1)
    clock.now += 99
    assert cache.snapshot() is first
    clock.now += 2  # past the TTL
    second = cache.snapshot()
    assert second is not first and cache.misses == 2
    assert cache.invalidate() == 1
    assert cache.snapshot() is not second and cache.misses == 3
    assert cache.status()["inventory_cars"] == len(golden.inventory())


def test_sold_car_leaves_the_snapshot_on_reload(repository):
    cache = InventoryCache(repository, ttl_seconds=1000, prefilter_entries=10)
    car = golden.offers()[0]["cars"][0]
    assert car in cache.snapshot().row_of
    repository.set_car_available(car, False)
    try:
        assert car in cache.snapshot().row_of  # cached until TTL or invalidation
        cache.invalidate()
        assert car not in cache.snapshot().row_of
        customer = golden_customer(golden.offers()[0])
        assert car not in cache.prefilter_sql(load_kernel(), customer, False, 500).car_ids
    finally:
        repository.set_car_available(car, True)


def test_circuit_breaker_opens_probes_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_seconds=5, clock=clock)
    states = []
    breaker.listeners.append(states.append)

    def fail():
        raise OSError("down")

    for _ in range(3):
        with pytest.raises(OSError):
            breaker.call(fail, lambda exc: True)
    assert breaker.state == "open" and states == ["open"]
    with pytest.raises(Unavailable):  # fails fast, without calling
        breaker.call(lambda: pytest.fail("called while open"), lambda exc: True)
    clock.now += 5
    assert breaker.state == "half_open"
    with pytest.raises(OSError):  # the probe fails: open again for another period
        breaker.call(fail, lambda exc: True)
    assert breaker.state == "open"
    clock.now += 5
    assert breaker.call(lambda: 42, lambda exc: True) == 42
    assert breaker.state == "closed" and states == ["open", "closed"]


def test_errors_that_are_not_outages_do_not_trip_the_breaker():
    breaker = CircuitBreaker(failures=1, reset_seconds=5)
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["x"], lambda exc: isinstance(exc, OSError))
    assert breaker.state == "closed"


def test_same_region_on_both_paths(repository):
    from dataclasses import replace as swap
    cars = golden.cars()[:50]
    try:
        repository.put_cars([swap(c, region="Monterrey" if k % 2 else "Puebla") for k, c in enumerate(cars)])
        cache = InventoryCache(repository, ttl_seconds=60, prefilter_entries=10)
        wide = replace(golden.domain_customers()[0], current_car_price=1.0, current_car_year=1990,
                       current_car_km=10 ** 7)
        for region, expected in (("Monterrey", 25), ("Puebla", 25), ("Nowhere", 0), ("", 3950)):
            customer = replace(wide, region=region)
            sql = cache.prefilter_sql(load_kernel(), customer, True, 2000).car_ids
            memory = cache.snapshot().match(load_kernel(), customer, True, 2000).car_ids
            assert sql == memory and len(sql) == min(expected, 2000)
            assert all(golden.inventory()[c] for c in sql)
    finally:
        repository.put_cars(cars)
