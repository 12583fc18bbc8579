"""Hypothesis-generated requests for every RPC against a live server: extreme, NaN, negative,
huge and empty values, odd unicode, oversized strings, repeated fields over their limits.
No call may end INTERNAL (or UNKNOWN), and every client-error message names the field.
TRADEUP_FUZZ_EXAMPLES sets the requests per RPC (default 2,000: over 10,000 in all)."""
from __future__ import annotations

import os
import re

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import golden_data as golden
from client import error_details
from protos.tradeup.v1 import admin_pb2, offers_pb2 as pb, search_pb2

EXAMPLES = int(os.environ.get("TRADEUP_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
# "field: message", "field[3]: message" or "customer C0001: field: message"
NAMES_A_FIELD = re.compile(r"^(customer .{0,64}: )?[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: \S")
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}

# Real ids of the vector set next to made-up text, so that requests also reach the pricing.
CUSTOMERS = golden.spread(golden.customer_ids(), 3)
CARS = [r["cars"][0] for r in map(golden.offers_of, CUSTOMERS) if r["cars"]] + [next(iter(golden.inventory()))]
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80) | st.sampled_from(
    ["", *CUSTOMERS[:2], CARS[0], "x" * 5000, "' OR 1=1 --", "\u202e\u0000\U0001F697", CUSTOMERS[0] + "\n"])
ids = st.sampled_from([*CUSTOMERS, ""]) | text
car_ids = st.sampled_from(CARS) | text
doubles = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, -1.0, 1e-300, 1e300, 5398.16, 175999.0, 0.04, 18.5, 2.0**53])
int32 = st.integers(-2**31, 2**31 - 1) | st.sampled_from([0, 12, 48, 72, 2013, 105000])
uint32 = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 3, 500, 2000, 2001])
optional = lambda strategy: st.none() | strategy  # noqa: E731

profiles = st.builds(lambda *v: pb.CustomerProfile(**{k: x for k, x in zip(
    ("customer_id", "current_monthly_payment", "outstanding_balance", "current_car_price", "current_car_year",
     "current_car_km", "risk_profile_name", "region", "current_car_brand", "current_car_model"), v)}),
    text, doubles, doubles, doubles, int32, int32, text, text, text, text)
overrides = st.builds(lambda *v: pb.PricingOverrides(**{k: x for k, x in zip(
    ("service_fee_pct", "cxa_pct", "cac_bonus", "kavak_total_amount", "insurance_amount", "interest_rate"), v)
    if x is not None}), *[optional(doubles)] * 6)
options = st.builds(lambda terms, tiers, max_offers, same_region, max_cars: pb.OfferOptions(
    terms=terms, tiers=tiers, max_offers=max_offers, same_region=same_region, max_cars=max_cars),
    st.lists(int32, max_size=30), st.lists(st.integers(-5, 8), max_size=15), uint32, st.booleans(), uint32)
names = st.lists(st.sampled_from(["Mazda", "HONDA", "cdmx", "Blanco", "Querétaro"]) | text, max_size=4) | st.just(
    ["Kia"] * 51)
filters = st.none() | st.builds(lambda *v: pb.ConsiderationFilters(**{k: x for k, x in zip(
    ("price_min", "price_max", "max_price_vs_current", "brands", "exclude_brands", "same_brand_as_current",
     "other_brand_than_current", "year_min", "year_max", "km_max", "max_km_vs_current", "promotion_only", "regions",
     "colors"), v) if x is not None}),
    optional(doubles), optional(doubles), optional(doubles), names, names, st.booleans(), st.booleans(),
    optional(int32), optional(int32), optional(int32), optional(doubles), st.booleans(), names, names)

grid_values = doubles | st.sampled_from([0.005, 0.01, 0.02, 0.05, 0.3, 1.0, 250.0, 1000.0, 10000.0])
grids = st.none() | st.builds(lambda *v: pb.SubsidySearchGrid(**{k: x for k, x in zip(
    ("service_fee_max", "service_fee_min", "service_fee_step", "cac_min", "cac_max", "cac_step", "cxa_max", "cxa_min",
     "cxa_step", "kavak_total_enabled", "kavak_total_amount"), v) if x is not None}),
    *[optional(grid_values)] * 9, optional(st.booleans()), optional(grid_values))
orders = st.sampled_from(["", "price", "year desc", "kilometers desc", "car_id", "customer_id desc", "price  desc"]) | text
page_sizes = st.integers(-2**31, 2**31 - 1) | st.sampled_from([0, 1, 3, 500, 501])
tokens = st.sampled_from(["", "WyJ4Il0", "WyIwMTIzNDU2Nzg5YWJjZGVmIiwgMSwgIklOVjAwMDAxIl0"]) | text


def with_customer(message, customer):
    kind, value = customer
    if kind == "id":
        message.customer_id = value
    elif kind == "profile":
        message.profile.CopyFrom(value)
    return message


customers = st.tuples(st.just("id"), ids) | st.tuples(st.just("profile"), profiles) | st.just(("none", None))


def check(call):
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            result = list(result)
        return result
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), err.details()
        if err.code() in CLIENT_ERRORS:
            assert NAMES_A_FIELD.match(err.details()), err.details()
            details = error_details(err)  # and the same in the rich error model, with its detail type
            assert details.domain == "tradeup.v1" and details.reason, (err.details(), details)
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert details.violations and err.details().endswith(": ".join(details.violations[0])), details
            if err.code() == grpc.StatusCode.NOT_FOUND:
                assert details.resource and details.resource[1], details
        return None


@pytest.fixture
def stubs(tmp_path):
    """A server on its own embedded database with the golden data (the SQL is the same on MariaDB,
    whose injection and fault behaviour other tests cover)."""
    from conftest import load_golden, start_server
    environ = {"TRADEUP_SQLITE_PATH": str(tmp_path / "fuzz.db")}
    load_golden(environ)
    running = start_server(environ, TRADEUP_MAX_CONCURRENT_RPCS=1000)
    yield running.client
    running.stop()


@FUZZ
@given(customer=customers, overrides=overrides, options=options, filters=filters)
def test_fuzz_generate_and_stream(stubs, customer, overrides, options, filters):
    request = with_customer(pb.GenerateOffersRequest(overrides=overrides, options=options, filters=filters), customer)
    response = check(lambda: stubs.offers.GenerateOffers(request, timeout=30))
    stream = with_customer(pb.StreamOffersRequest(overrides=overrides, options=options, filters=filters), customer)
    messages = check(lambda: stubs.offers.StreamOffers(stream, timeout=30))
    if response is not None and messages is not None:
        assert sum(len(m.offers) for m in messages) == sum(len(g.offers) for g in response.groups)


@FUZZ
@given(customer=customers, cars=st.lists(car_ids, max_size=5) | st.just([CARS[-1]] * 2001),
       overrides=overrides, same_region=st.booleans(), max_cars=st.sampled_from([0, 1, 20, 2000, 2001, 2**32 - 1]),
       filters=filters, grid=grids, max_viable=uint32)
def test_fuzz_minimum_subsidy(stubs, customer, cars, overrides, same_region, max_cars, filters, grid, max_viable):
    request = with_customer(pb.FindMinimumSubsidyRequest(car_ids=cars, overrides=overrides, same_region=same_region,
                                                         max_cars=min(max_cars, 20) if not cars else max_cars,
                                                         filters=filters, grid=grid, max_viable=max_viable), customer)
    messages = check(lambda: stubs.offers.FindMinimumSubsidy(request, timeout=30))
    if messages:
        summary = messages[-1].summary
        assert summary.searched == sum(len(m.results) for m in messages) <= summary.candidates
        assert len(summary.best_viable) == summary.viable <= (max_viable or summary.viable)


# The three search RPCs in one test (one server), on a quarter of the examples: their fields are few.
@settings(FUZZ, max_examples=max(EXAMPLES // 4, 1))
@given(query=text, filters=filters, order_by=orders, page_size=page_sizes, page_token=tokens, id_prefix=ids,
       region=text, risk_profile=st.sampled_from(["A1", "B", ""]) | text)
def test_fuzz_search(stubs, query, filters, order_by, page_size, page_token, id_prefix, region, risk_profile):
    page = check(lambda: stubs.search.SearchInventory(search_pb2.SearchInventoryRequest(
        query=query, filters=filters, order_by=order_by, page_size=page_size, page_token=page_token), timeout=30))
    facets = check(lambda: stubs.search.InventoryFacets(search_pb2.InventoryFacetsRequest(query=query, filters=filters),
                                                        timeout=30))
    if page is not None and facets is not None:
        assert page.total_size == facets.total_cars and len(page.cars) <= min(page_size or 50, 500)
    customers = check(lambda: stubs.search.SearchCustomers(search_pb2.SearchCustomersRequest(
        id_prefix=id_prefix, text=query, region=region, risk_profile=risk_profile, order_by=order_by,
        page_size=page_size, page_token=page_token), timeout=30))
    if customers is not None:
        assert all(c.customer_id.startswith(id_prefix) for c in customers.customers)


@FUZZ
@given(customer=customers, car=car_ids, term=int32, overrides=overrides)
def test_fuzz_amortization(stubs, customer, car, term, overrides):
    request = with_customer(pb.GetAmortizationTableRequest(car_id=car, term=term, overrides=overrides), customer)
    check(lambda: stubs.offers.GetAmortizationTable(request, timeout=30))


@FUZZ
@given(requests=st.lists(st.tuples(customers, overrides, options, filters), max_size=4))
def test_fuzz_bulk(stubs, requests):
    messages = [with_customer(pb.GenerateOffersBulkRequest(overrides=o, options=p, filters=f), c)
                for c, o, p, f in requests]
    responses = check(lambda: stubs.offers.GenerateOffersBulk(iter(messages), timeout=30))
    if responses is not None:
        assert [r.index for r in responses] == list(range(len(messages)))
        for response in responses:
            if response.WhichOneof("result") == "error":
                assert response.error.code not in ("INTERNAL", "UNKNOWN")
                assert NAMES_A_FIELD.match(response.error.message), response.error.message


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=4), max_leaves=12)
business_keys = st.sampled_from(["fees", "iva_rate", "terms", "tiers", "subsidy_search", "down_payment_table",
                                 "interest_rate_table", "term_rate_adjustments", "unknown"])


@FUZZ
@given(changes=st.dictionaries(business_keys, json_values, max_size=3))
def test_fuzz_admin(stubs, changes):
    struct = struct_pb2.Struct()
    struct.update(changes)
    metadata = (("authorization", "Bearer test-admin-token"),)
    try:
        stubs.admin.UpdateBusinessParameters(admin_pb2.UpdateBusinessParametersRequest(changes=struct),
                                             timeout=10, metadata=metadata)
    except grpc.RpcError as err:  # keys are the caller's own text: the message starts with their path
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("changes"), err.details()
    assert stubs.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10, metadata=metadata).database_reachable


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 20))
@given(customer=customers, options=options, filters=filters)
def test_fuzz_watch(stubs, customer, options, filters):
    call = stubs.offers.WatchOffers(with_customer(pb.WatchOffersRequest(options=options, filters=filters), customer),
                                    timeout=30)
    check(lambda: next(call))
    call.cancel()
