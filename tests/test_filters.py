"""Consideration filters: the SQL prefilter, the snapshot's columns and a plain reading of the
contract agree on random filters and customers, on SQLite and MariaDB; filters narrow the cars
before the limit and never change a price; every field is validated by name; the prefilter
cache tells filters apart by their canonical form; customers' current brand and model migrate."""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import golden_data as golden
from client import error_details
from conftest import BACKENDS, database_environ, load_golden, make_settings
from engine_ext import load_kernel
from protos.tradeup.v1 import offers_pb2 as pb
from server.app import open_repository
from server.data.demo import COLORS, MODELS, REGIONS, demo_cars, demo_customers
from server.data.filters import ConsiderationFilters, names
from server.data.inventory import InventoryCache
from server.errors import FailedPrecondition

CUSTOMERS_PER_FILTER = 10
# Filters drawn per backend, each tried on CUSTOMERS_PER_FILTER customers: 10,000 cases in all
# (fewer on MariaDB, whose round trips cost more).
EXAMPLES = {"sqlite": 750, "mysql": 250}


BROWN = "Marrón"


def spellings(name: str) -> list[str]:
    return [name, name.upper(), name.lower()]


def filter_cars() -> list:
    """Demo cars (a few not available), one in five with its brand in capitals, one in four
    'Marrón' or 'MARRÓN' (names match ignoring case, accented letters too) and one in six with its
    region in capitals (same_region compares regions exactly, in every mode and database)."""
    cars = [replace(car, brand=car.brand.upper()) if k % 5 == 0 else car for k, car in enumerate(demo_cars(800))]
    cars = [replace(car, region=car.region.upper()) if k % 6 == 1 else car for k, car in enumerate(cars)]
    return [replace(car, color=spellings(BROWN)[k % 3]) if k % 4 == 0 else car for k, car in enumerate(cars)]


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request, tmp_path_factory):
    """(repository, snapshot, cars in prefilter order) of a database holding filter_cars(); the
    shared MariaDB database gets the vector set back afterwards."""
    environ = database_environ(request.param, request, tmp_path_factory.mktemp("filters"))
    repository = open_repository(make_settings(environ))
    repository.migrate()
    repository.seed(filter_cars(), [], replace=True)
    snapshot = InventoryCache(repository, ttl_seconds=600, prefilter_entries=10).snapshot()
    ordered = [Row(car.car_id, car.price, car.year, car.kilometers, car.region, car.brand.lower(), car.region.lower(),
                   car.color.lower(), car.promotion_price is not None and car.promotion_price < car.regular_price)
               for car in sorted((c for c in filter_cars() if c.available), key=lambda c: (-c.year, -c.price, c.car_id))]
    yield repository, snapshot, ordered
    repository.database.close()
    if request.param == "mysql":
        load_golden(environ)


class Row(NamedTuple):
    """What the contract looks at in a car, its names in lower case."""
    car_id: str
    price: float
    year: int
    kilometers: int
    region: str
    brand: str
    region_name: str
    color: str
    on_promotion: bool


def brute_force(ordered: list[Row], customer, f: ConsiderationFilters, same_region: bool, limit: int) -> list[str]:
    """The contract read plainly, car by car (cars in prefilter order)."""
    current = customer.current_car_brand.lower()
    brands, excluded = {b.lower() for b in f.brands}, {b.lower() for b in f.exclude_brands}
    regions, colors = {r.lower() for r in f.regions}, {c.lower() for c in f.colors}
    found = []
    for car in ordered:
        price = car.price
        if (price > customer.current_car_price and car.year >= customer.current_car_year
                and car.kilometers < customer.current_car_km and (not same_region or car.region == customer.region)
                and (f.price_min is None or price >= f.price_min) and (f.price_max is None or price <= f.price_max)
                and (f.max_price_vs_current is None or price <= f.max_price_vs_current * customer.current_car_price)
                and (not brands or car.brand in brands) and car.brand not in excluded
                and (not f.same_brand_as_current or car.brand == current)
                and (not f.other_brand_than_current or car.brand != current)
                and (f.year_min is None or car.year >= f.year_min) and (f.year_max is None or car.year <= f.year_max)
                and (f.km_max is None or car.kilometers <= f.km_max)
                and (f.max_km_vs_current is None or car.kilometers <= f.max_km_vs_current * customer.current_car_km)
                and (not f.promotion_only or car.on_promotion)
                and (not regions or car.region_name in regions) and (not colors or car.color in colors)):
            found.append(car.car_id)
            if len(found) == limit:
                break
    return found


CARS = filter_cars()
sometimes = lambda strategy: st.one_of(st.none(), st.none(), strategy)  # noqa: E731
name_lists = lambda choices: st.one_of(st.just(()), st.just(()), st.lists(  # noqa: E731
    st.sampled_from([s for name in choices for s in spellings(name)]), min_size=1, max_size=3))
flags = st.sampled_from([(False, False)] * 4 + [(True, False), (False, True)])
filters = st.builds(
    lambda price_min, price_max, price_ratio, brands, exclude, same_other, year_min, year_max, km_max, km_ratio,
    promotion, regions, colors: ConsiderationFilters(
        price_min=price_min, price_max=price_max, max_price_vs_current=price_ratio, brands=names(brands),
        exclude_brands=names(exclude), same_brand_as_current=same_other[0], other_brand_than_current=same_other[1],
        year_min=year_min, year_max=year_max, km_max=km_max, max_km_vs_current=km_ratio, promotion_only=promotion,
        regions=names(regions), colors=names(colors)),
    sometimes(st.sampled_from([c.price for c in CARS]) | st.floats(100_000, 900_000)),
    sometimes(st.sampled_from([c.price for c in CARS]) | st.floats(200_000, 1_500_000)),
    sometimes(st.floats(0.5, 4.0)), name_lists([*MODELS, "Tesla"]), name_lists([*MODELS, "Tesla"]), flags,
    sometimes(st.integers(2014, 2025)), sometimes(st.integers(2014, 2025)),
    sometimes(st.sampled_from([c.kilometers for c in CARS]) | st.integers(0, 150_000)),
    sometimes(st.floats(0.0, 3.0)), st.sampled_from([False] * 5 + [True]),
    name_lists([*REGIONS, "Oaxaca"]), name_lists([*COLORS, BROWN, "Verde"]))
# Demo customers, some with the brand spelled otherwise or none at all, some with the region in capitals.
PEOPLE = [replace(c, current_car_brand=(c.current_car_brand.upper() if k % 3 == 1 else
                                        "" if k % 7 == 6 else c.current_car_brand),
                  region=c.region.upper() if k % 4 == 1 else c.region)
          for k, c in enumerate(demo_customers(300))]


def test_sql_and_snapshot_filter_as_the_contract_reads(loaded):
    repository, snapshot, ordered = loaded
    compiled, twin = load_kernel("compiled"), load_kernel("python")
    counts = {"cases": 0, "with cars": 0}

    @settings(max_examples=EXAMPLES[repository.backend], deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(f=filters, people=st.lists(st.tuples(st.sampled_from(PEOPLE), st.booleans(),
                                                st.sampled_from([1, 3, 10, 40, 150])),
                                      min_size=CUSTOMERS_PER_FILTER, max_size=CUSTOMERS_PER_FILTER))
    def check(f, people):
        for customer, same_region, limit in people:
            counts["cases"] += 1
            try:
                bounds = f.resolve(customer)
            except FailedPrecondition as exc:
                assert (f.same_brand_as_current or f.other_brand_than_current) and not customer.current_car_brand
                assert exc.field.startswith("filters.") and "current_car_brand" in str(exc)
                continue
            expected = brute_force(ordered, customer, f, same_region, limit)
            region = customer.region if same_region else None
            sql = repository.prefilter_ids(customer.current_car_price, customer.current_car_year,
                                           customer.current_car_km, region, limit, bounds)
            kernel = twin if counts["cases"] % 10 == 0 else compiled  # the twin on a tenth of the cases
            assert snapshot.match(kernel, customer, same_region, limit, bounds).car_ids == sql == expected, \
                (customer.customer_id, same_region, limit)
            counts["with cars"] += bool(expected)

    check()
    assert counts["cases"] == EXAMPLES[repository.backend] * CUSTOMERS_PER_FILTER
    assert counts["with cars"] >= counts["cases"] // 5  # the filters drawn let cars through often enough


def test_the_snapshot_mask_is_the_filter_alone(loaded):
    """mask(): the rows passing the filters, whatever the customer, as the contract reads."""
    _, snapshot, ordered = loaded
    anyone = replace(PEOPLE[0], current_car_price=0.0, current_car_year=1950, current_car_km=10**9)  # all trade-ups
    for f in (ConsiderationFilters(brands=names(["mazda", "KIA"]), colors=names([BROWN.upper()])),
              ConsiderationFilters(year_min=2020, km_max=30_000, promotion_only=True)):
        mask = snapshot.mask(load_kernel(), f.resolve(anyone))
        assert [snapshot.car_ids[row] for row in mask.nonzero()[0]] == \
            brute_force(ordered, anyone, f, False, len(ordered)) != []


def test_facets_count_names_as_the_filters_match_them(loaded):
    """A filter panel's entry selects as many cars as it counts: names in two spellings are one entry."""
    from collections import Counter
    from server.deadline import Deadline
    from server.services.search import SearchService
    from server.services.workers import Workers
    repository, _, ordered = loaded
    cache = InventoryCache(repository, ttl_seconds=600, prefilter_entries=10)
    facets = SearchService(repository, cache, Workers(1), load_kernel()).facets("", ConsiderationFilters(),
                                                                               Deadline.after(30))
    for entries, expected in ((facets.brands, Counter(row.brand for row in ordered)),
                              (facets.colors, Counter(row.color for row in ordered)),
                              (facets.regions, Counter(row.region_name for row in ordered))):
        assert {name.lower(): count for name, count in entries} == expected and len(entries) == len(expected)
    shown = dict(facets.colors)
    assert BROWN in shown or BROWN.upper() in shown  # a spelling the cars have


def test_the_prefilter_cache_keys_filters_by_their_canonical_form(loaded):
    repository, _, _ = loaded
    cache = InventoryCache(repository, ttl_seconds=600, prefilter_entries=100)
    kernel, customer = load_kernel(), PEOPLE[0]
    mazda = ConsiderationFilters(brands=names(["Mazda", "HONDA"]))
    again = ConsiderationFilters(brands=names(["honda", "mazda", "Mazda"]))
    kia = ConsiderationFilters(brands=names(["Kia"]))
    first = cache.prefilter_sql(kernel, customer, False, 2000, bounds=mazda.resolve(customer)).car_ids
    assert cache.prefilter_sql(kernel, customer, False, 2000, bounds=again.resolve(customer)).car_ids == first
    assert cache.counts["prefilter"] == [1, 1]  # the same filters in other words: a hit
    other = cache.prefilter_sql(kernel, customer, False, 2000, bounds=kia.resolve(customer)).car_ids
    unfiltered = cache.prefilter_sql(kernel, customer, False, 2000).car_ids
    assert cache.counts["prefilter"] == [1, 3]
    assert first and other and not set(first) & set(other) and set(first) | set(other) < set(unfiltered)


def test_customers_gain_a_current_brand_and_model_by_migration(repository):
    """A database from before the columns: migrate adds them, every row kept, brand and model empty."""
    customers, counts = repository.get_customers(golden.customer_ids()[:3]), repository.counts()
    with repository.database.cursor() as cursor:
        for column in ("current_car_brand", "current_car_model"):
            cursor.execute(f"ALTER TABLE customers DROP COLUMN {column}")
    repository.migrate()
    assert repository.get_customers(list(customers)) == customers and repository.counts() == counts
    mazda = replace(next(iter(customers.values())), current_car_brand="Mazda", current_car_model="CX-5")
    repository.put_customers([mazda])
    try:
        assert repository.get_customer(mazda.customer_id) == mazda
    finally:
        repository.put_customers([customers[mazda.customer_id]])


# --- over gRPC, on the vector set (brands from the model names) -----------------------------------
def offers_by_key(response) -> dict:
    return {(o.car_id, o.term): o for g in response.groups for o in g.offers}


def brand_of(car: dict) -> str:
    return car["model"].split(" ")[0]


INVENTORY = sorted(golden.inventory().values(), key=lambda r: (-r["year"], -r["car_price"], r["car_id"]))


def trade_ups(customer_id: str) -> list[dict]:
    """The vector set's logical trade-ups of a customer, in prefilter order (no limit)."""
    c = golden.customers()[customer_id]
    return [car for car in INVENTORY if car["car_price"] > c["current_car_price"]
            and car["year"] >= c["current_car_year"] and car["kilometers"] < c["current_car_km"]]


def priced_in_full() -> str:
    """A customer with offers whose trade-ups all fit under the largest max_cars."""
    return golden.customer_where("20 offers and at most 2,000 trade-ups",
                                 lambda r: len(r["offers"]) >= 20 and len(trade_ups(r["customer_id"])) <= 2000)


def test_filters_select_cars_and_never_change_a_price(server):
    customer = priced_in_full()
    cars = trade_ups(customer)
    brand = brand_of(cars[0])
    prices = sorted(car["car_price"] for car in cars if brand_of(car) == brand)
    price_max = prices[len(prices) // 2]  # about half of the brand's cars
    wanted = {"brands": [brand.upper(), "Tesla"], "price_max": price_max, "year_min": cars[-1]["year"]}
    every = server.client.generate_offers(customer_id=customer, max_cars=2000)
    filtered = server.client.generate_offers(customer_id=customer, max_cars=2000, filters=wanted)
    passing = [car["car_id"] for car in cars if brand_of(car) == brand and car["car_price"] <= price_max]
    assert every.summary.cars_evaluated == len(cars) and filtered.summary.cars_evaluated == len(passing) > 0
    unfiltered, got = offers_by_key(every), offers_by_key(filtered)
    assert got and all(offer == unfiltered[key] for key, offer in got.items())  # every field, bit for bit
    assert {key for key in unfiltered if key[0] in passing} == got.keys()
    # Before the limit: the first two passing cars, not the passing ones among the first two.
    first_two = server.client.generate_offers(customer_id=customer, max_cars=2, filters=wanted)
    assert first_two.summary.cars_evaluated == min(2, len(passing))
    assert {car_id for car_id, _ in offers_by_key(first_two)} <= set(passing[:2])


STORED = golden.customer_ids()[0]


BAD_FILTERS = [
    ({"price_min": -1.0}, "filters.price_min"),
    ({"price_max": float("nan")}, "filters.price_max"),
    ({"price_min": 300000.0, "price_max": 200000.0}, "filters.price_max"),
    ({"max_price_vs_current": 0.0}, "filters.max_price_vs_current"),
    ({"max_price_vs_current": float("inf")}, "filters.max_price_vs_current"),
    ({"brands": ["Kia"] * 51}, "filters.brands"),
    ({"brands": ["x" * 65]}, "filters.brands[0]"),
    ({"exclude_brands": ["Kia", ""]}, "filters.exclude_brands[1]"),
    ({"same_brand_as_current": True, "other_brand_than_current": True}, "filters.other_brand_than_current"),
    ({"year_min": 1949}, "filters.year_min"),
    ({"year_max": 2101}, "filters.year_max"),
    ({"year_min": 2022, "year_max": 2020}, "filters.year_max"),
    ({"km_max": -1}, "filters.km_max"),
    ({"max_km_vs_current": -0.5}, "filters.max_km_vs_current"),
    ({"regions": ["\x00"]}, "filters.regions[0]"),
    ({"colors": ["c"] * 51}, "filters.colors"),
]


def test_every_filter_field_is_validated_by_name_on_every_call(server):
    client = server.client
    for filters, field in BAD_FILTERS:
        calls = (lambda: client.generate_offers(customer_id=STORED, filters=filters),
                 lambda: list(client.stream_offers(customer_id=STORED, filters=filters)),
                 lambda: list(client.find_minimum_subsidy(customer_id=STORED, filters=filters, max_cars=5)),
                 lambda: next(client.watch_offers(customer_id=STORED, filters=filters, timeout=10)))
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field + ":"), err.value.details()
        requests = [{"customer_id": STORED}, {"customer_id": STORED, "filters": filters}]
        bulk = list(client.generate_offers_bulk(requests))
        assert bulk[0].WhichOneof("result") == "offers"
        assert bulk[1].error.code == "INVALID_ARGUMENT" and bulk[1].error.message.startswith(field + ":")


def test_a_brand_filter_needs_the_customers_current_brand(server):
    for flag in ("same_brand_as_current", "other_brand_than_current"):
        with pytest.raises(grpc.RpcError) as err:  # the vector set's customers have no brand
            server.client.generate_offers(customer_id=STORED, filters={flag: True})
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details().startswith(f"filters.{flag}:") and "current_car_brand" in err.value.details()
        details = error_details(err.value)  # a PreconditionFailure naming the filter, and its reason
        assert details.reason == "CUSTOMER_BRAND_UNKNOWN" and [f for f, _ in details.violations] == [f"filters.{flag}"]
    customer = priced_in_full()
    brand = brand_of(trade_ups(customer)[0])
    profile = {**golden.customers()[customer], "current_car_brand": brand.lower()}
    profile = {k: v for k, v in profile.items() if k in pb.CustomerProfile.DESCRIPTOR.fields_by_name}
    same = server.client.generate_offers(profile=profile, max_cars=2000, filters={"same_brand_as_current": True})
    other = server.client.generate_offers(profile=profile, max_cars=2000, filters={"other_brand_than_current": True})
    every = server.client.generate_offers(profile=profile, max_cars=2000)
    assert same.summary.cars_evaluated > 0 and other.summary.cars_evaluated > 0
    assert same.summary.cars_evaluated + other.summary.cars_evaluated == every.summary.cars_evaluated
    assert all(golden.inventory()[car_id]["model"].startswith(brand + " ") for car_id, _ in offers_by_key(same))


def test_every_filter_field_has_its_check():
    from server.rpc.converters import _FILTER_FIELDS
    assert set(_FILTER_FIELDS) == set(pb.ConsiderationFilters.DESCRIPTOR.fields_by_name)
