"""The service as its users meet it: a real server on a loopback port, generated stubs."""
from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import golden_data as golden
from client import error_details
from protos.tradeup.v1 import offers_pb2 as pb

PROFILE = {"customer_id": "inline-1", "current_monthly_payment": 5398.16, "outstanding_balance": 59252.09,
           "current_car_price": 175999.0, "current_car_year": 2013, "current_car_km": 105000,
           "risk_profile_name": "A2", "risk_profile_index": 4}
STORED = golden.customer_ids()[0]  # a customer in the database, where any will do


def offer_key(o):
    return (o.car_id, o.term)


def test_generate_offers_matches_golden(server):
    for record in golden.offers()[:25]:
        response = server.client.generate_offers(customer_id=record["customer_id"])
        got = {offer_key(o): o for g in response.groups for o in g.offers}
        expected = {(o["car_id"], o["term"]): o for o in record["offers"]}
        assert got.keys() == expected.keys()
        names = {pb.TIER_REFRESH: "Refresh", pb.TIER_UPGRADE: "Upgrade", pb.TIER_MAX_UPGRADE: "Max Upgrade"}
        for key, want in expected.items():
            assert names[got[key].tier] == want["tier"]
            assert golden.close(got[key].monthly_payment, want["monthly_payment"])
            assert golden.close(got[key].loan_amount, want["loan_amount"])
        s = response.summary
        assert s.cars_evaluated == len(record["cars"]) and s.total_offers == len(expected)
        assert [g.tier for g in response.groups] == [pb.TIER_REFRESH, pb.TIER_UPGRADE, pb.TIER_MAX_UPGRADE]
        assert [g.count for g in response.groups] == [s.refresh_count, s.upgrade_count, s.max_upgrade_count]
        assert s.rejected.down_payment_not_met + s.rejected.loan_not_positive + s.rejected.delta_below_floor + \
            s.rejected.delta_above_ceiling + s.total_offers == 6 * s.cars_evaluated
        assert s.timing.total_ms >= s.timing.database_ms >= 0 and s.timing.engine_ms >= 0


def test_stream_offers_is_the_ranked_list_in_batches(server):
    record = golden.offers_of(golden.customer_with_offers())
    unary = server.client.generate_offers(customer_id=record["customer_id"])
    ranked = [offer_key(o) for g in unary.groups for o in g.offers]
    messages = list(server.client.stream_offers(customer_id=record["customer_id"]))
    streamed = [offer_key(o) for m in messages for o in m.offers]
    assert streamed == ranked
    assert len(messages) == -(-len(ranked) // server.app.settings.current.server.stream_batch_size)
    assert [m.HasField("summary") for m in messages] == [False] * (len(messages) - 1) + [True]
    assert messages[-1].summary.total_offers == len(ranked)


def test_options_terms_tiers_limit_and_overrides(server):
    cid = golden.customer_where("an offer and 10 cars", lambda r: r["offers"] and len(r["cars"]) >= 10)
    term = golden.offers_of(cid)["offers"][0]["term"]
    adjustment = golden.params().term_rate_adjustments.get(term, 0.0)  # added to the overridden rate
    only = server.client.generate_offers(customer_id=cid, terms=[48, 60], tiers=["refresh"], max_offers=7)
    offers = [o for g in only.groups for o in g.offers]
    assert [g.tier for g in only.groups] == [pb.TIER_REFRESH]
    assert len(offers) == min(7, only.summary.refresh_count) and {o.term for o in offers} <= {48, 60}
    assert only.summary.upgrade_count == only.summary.max_upgrade_count == 0
    base = server.client.generate_offers(customer_id=cid, terms=[term])
    cheaper = server.client.generate_offers(customer_id=cid, terms=[term], overrides={"service_fee_pct": 0.0,
                                                                                      "interest_rate": 10.0})
    by_key = {offer_key(o): o for g in base.groups for o in g.offers}
    compared = [(by_key[offer_key(o)], o) for g in cheaper.groups for o in g.offers if offer_key(o) in by_key]
    assert compared and all(new.monthly_payment < old.monthly_payment and new.service_fee_amount == 0
                            and new.interest_rate == pytest.approx(0.10 + adjustment) for old, new in compared)
    limited = server.client.generate_offers(customer_id=cid, max_cars=10)
    assert limited.summary.cars_evaluated == 10


def test_inline_profile_equals_the_stored_customer(server):
    customer = golden.customer_with_offers()
    stored = server.client.generate_offers(customer_id=customer)
    profile = {field: golden.customers()[customer][field] for field in PROFILE if field != "customer_id"}
    inline = server.client.generate_offers(profile={**profile, "customer_id": "inline-1"})
    assert inline.summary.customer_id == "inline-1"
    assert [offer_key(o) for g in inline.groups for o in g.offers] == \
        [offer_key(o) for g in stored.groups for o in g.offers]


@pytest.mark.parametrize("request_kwargs, field", [
    ({"customer_id": ""}, "customer_id"),
    ({"customer_id": "x" * 65}, "customer_id"),
    ({"profile": {**PROFILE, "current_monthly_payment": 0}}, "profile.current_monthly_payment"),
    ({"profile": {**PROFILE, "current_monthly_payment": float("nan")}}, "profile.current_monthly_payment"),
    ({"profile": {**PROFILE, "current_car_price": -5}}, "profile.current_car_price"),
    ({"profile": {**PROFILE, "current_car_year": 3000}}, "profile.current_car_year"),
    ({"profile": {**PROFILE, "risk_profile_index": 26}}, "profile.risk_profile_index"),
    ({"profile": {**PROFILE, "region": "r" * 65}}, "profile.region"),
    ({"profile": {**PROFILE, "current_car_brand": "b" * 65}}, "profile.current_car_brand"),
    ({"profile": {**PROFILE, "current_car_model": "m\x00"}}, "profile.current_car_model"),
    ({"customer_id": STORED, "filters": {"km_max": -1}}, "filters.km_max"),
    ({"customer_id": STORED, "terms": [18]}, "options.terms"),
    ({"customer_id": STORED, "tiers": [7]}, "options.tiers"),
    ({"customer_id": STORED, "max_cars": 5000}, "options.max_cars"),
    ({"customer_id": STORED, "overrides": {"service_fee_pct": 2.0}}, "overrides.service_fee_pct"),
    ({"customer_id": STORED, "overrides": {"interest_rate": float("inf")}}, "overrides.interest_rate"),
    ({"customer_id": STORED, "overrides": {"cac_bonus": -1.0}}, "overrides.cac_bonus"),
])
def test_invalid_arguments_name_the_field(server, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as err:
        server.client.generate_offers(**request_kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


def test_missing_customer_is_invalid_and_unknown_is_not_found(server):
    with pytest.raises(grpc.RpcError) as err:
        server.client.offers.GenerateOffers(pb.GenerateOffersRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "customer" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        server.client.generate_offers(customer_id="NO-SUCH-CUSTOMER")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_is_echoed_or_generated_in_the_trailers(server):
    request = pb.GenerateOffersRequest(customer_id=STORED)
    _, call = server.client.offers.GenerateOffers.with_call(request, metadata=(("x-request-id", "abc-123"),), timeout=5)
    assert ("x-request-id", "abc-123") in call.trailing_metadata()
    assert "x-request-id" not in dict(call.initial_metadata())  # no headers of ours before the answer
    _, call = server.client.offers.GenerateOffers.with_call(request, timeout=5)
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32


def test_bulk_answers_every_customer_and_isolates_errors(server):
    first, second, third = (golden.customer_ids() * 3)[:3]  # three different ones when the set has them
    ids = [first, "NOPE", second, "", third]
    responses = list(server.client.generate_offers_bulk([{"customer_id": c} for c in ids]))
    assert [r.index for r in responses] == list(range(len(ids)))
    assert [r.customer_id for r in responses] == ids
    assert [r.WhichOneof("result") for r in responses] == ["offers", "error", "offers", "error", "offers"]
    assert responses[1].error.code == "NOT_FOUND" and responses[3].error.code == "INVALID_ARGUMENT"
    assert (responses[1].error.reason, responses[3].error.reason) == ("CUSTOMER_NOT_FOUND", "INVALID_REQUEST")
    single = server.client.generate_offers(customer_id=second)
    assert responses[2].offers.summary.total_offers == single.summary.total_offers


def test_minimum_subsidy_matches_golden(server):
    records = golden.stored_subsidies()[:30]
    for record in records:
        customer_id = record["customer"]["customer_id"]
        messages = list(server.client.find_minimum_subsidy(customer_id=customer_id, car_ids=[record["car"]["car_id"]]))
        (result,) = [r for m in messages for r in m.results]
        want = record["result"]
        assert result.viable == want["viable"] and result.term == want["term"]
        assert result.iterations_tried == want["iterations_tried"]
        assert (result.service_fee_pct, result.cac_bonus, result.cxa_pct) == \
            (want["service_fee_pct"], want["cac_bonus"], want["cxa_pct"])
        assert golden.close(result.monthly_payment, want["monthly_payment"])


def test_minimum_subsidy_over_the_prefilter_streams_in_batches(server):
    record = golden.offers()[-1]
    messages = list(server.client.find_minimum_subsidy(customer_id=record["customer_id"]))
    results = [r for m in messages for r in m.results]
    assert [r.car_id for r in results] == record["cars"]
    assert messages[-1].cars_searched == len(results)
    assert messages[-1].viable_count == sum(r.viable for r in results)
    with pytest.raises(grpc.RpcError) as err:
        list(server.client.find_minimum_subsidy(customer_id=record["customer_id"], car_ids=["NOT-A-CAR"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("car_ids[0]")


def test_amortization_matches_golden(server):
    for record in golden.schedules()[:10]:
        offer = record["offer"]
        response = server.client.amortization(offer["car_id"], offer["term"], customer_id=record["customer_id"])
        assert len(response.rows) == offer["term"]
        assert golden.close(response.offer.monthly_payment, offer["monthly_payment"])
        for got, want in zip(response.rows, record["schedule"]):
            for field in ("saldo_insoluto", "capital", "interes", "iva", "exigible", "end_balance_total"):
                assert golden.close(getattr(got, field), want[field]), (field, got.cuota)


def test_amortization_errors(server):
    record = golden.offers_of(golden.customer_with_offers())
    car = record["offers"][0]["car_id"]
    with pytest.raises(grpc.RpcError) as err:
        server.client.amortization(car, 18, customer_id=record["customer_id"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("term")
    with pytest.raises(grpc.RpcError) as err:
        server.client.amortization("", 48, customer_id=record["customer_id"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    poor = {**PROFILE, "outstanding_balance": 175000.0}  # almost no equity: down payment never met
    with pytest.raises(grpc.RpcError) as err:
        server.client.amortization(car, 48, profile=poor)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_health_and_reflection(server):
    assert server.client.health() == "SERVING"
    assert server.client.health("tradeup.v1.OfferService") == "SERVING"
    assert server.client.health("tradeup.v1.AdminService") == "SERVING"
    assert server.client.health("tradeup.v1.SearchService") == "SERVING"
    with pytest.raises(grpc.RpcError) as err:
        server.client.health("no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stub = reflection_pb2_grpc.ServerReflectionStub(server.client.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for s in answer.list_services_response.service}
    assert names == {"tradeup.v1.OfferService", "tradeup.v1.SearchService", "tradeup.v1.AdminService",
                     "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    # Load tools (ghz) ask for the file of a method symbol.
    for symbol, filename in (("tradeup.v1.OfferService.GenerateOffers", "tradeup/v1/offers.proto"),
                             ("grpc.health.v1.Health.Check", "grpc_health/v1/health.proto"),
                             ("tradeup.v1.AdminService.GetStatus", "tradeup/v1/admin.proto"),
                             ("tradeup.v1.SearchService.SearchInventory", "tradeup/v1/search.proto")):
        (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=symbol)]), timeout=5)
        assert answer.WhichOneof("message_response") == "file_descriptor_response", symbol
        from google.protobuf import descriptor_pb2
        names = [descriptor_pb2.FileDescriptorProto.FromString(raw).name
                 for raw in answer.file_descriptor_response.file_descriptor_proto]
        assert filename in names
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="tradeup.v1.OfferService.NoSuchMethod")]), timeout=5)
    assert answer.WhichOneof("message_response") == "error_response"


def test_deadline_exceeded(server):
    with pytest.raises(grpc.RpcError) as err:
        list(server.client.find_minimum_subsidy(customer_id=STORED, max_cars=2000, timeout=0.001))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_admin_requires_the_token(server):
    from client import OfferClient
    with OfferClient(server.target) as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            anonymous.get_config()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with OfferClient(server.target, admin_token="wrong") as intruder:
        with pytest.raises(grpc.RpcError) as err:
            intruder.status()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_config_is_redacted(server):
    config = server.client.get_config()
    assert config["server"]["admin_token"] == "***"
    assert "test-admin-token" not in json.dumps(config)
    if config["database"]["url"]:
        assert config["database"]["url"] == "***"
    assert config["business"]["fees"]["service_fee_pct"] == 0.04


def test_admin_updates_business_parameters_at_runtime(server):
    customer = golden.customer_with_offers()
    term = golden.offers_of(customer)["offers"][0]["term"]
    before = server.client.generate_offers(customer_id=customer, terms=[term])
    business = server.client.update_business_parameters({"fees": {"service_fee_pct": 0.02, "cxa_pct": 0.04}},
                                                        changed_by="pricing-team")
    assert business["fees"]["service_fee_pct"] == 0.02
    after = server.client.generate_offers(customer_id=customer, terms=[term])
    assert before.summary.total_offers and after.summary.total_offers
    assert after.summary.config_version == before.summary.config_version + 1
    first = next(o for g in after.groups for o in g.offers)
    assert first.service_fee_amount == pytest.approx(0.02 * golden.inventory()[first.car_id]["car_price"])
    # Only the key whose value changed is stored (cxa_pct was 0.04 already), with who and when.
    (change,) = server.client.config_history().changes
    assert (change.key, change.new_value.number_value, change.changed_by) == (
        "business.fees.service_fee_pct", 0.02, "pricing-team")
    # The old value is the one in effect before (here the default), so any past quote can be explained.
    assert change.old_value.number_value == 0.04 and change.changed_at.seconds > 0
    # An invalid change is refused whole and changes nothing.
    for changes, field in (({"fees": {"service_fee_pct": 0.03, "cxa_pct": -1}}, "fees.cxa_pct"),
                           ({"fees": {"no_such_fee": 1}}, "fees.no_such_fee")):
        with pytest.raises(grpc.RpcError) as err:
            server.client.update_business_parameters(changes)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # every wrong change in one error
        server.client.update_business_parameters({"fees": {"service_fee_pct": 2, "cxa_pct": -1, "cac_bonus": 5},
                                                  "no_such_key": 1})
    assert sorted(field for field, _ in error_details(err.value).violations) == [
        "changes.fees.cxa_pct", "changes.fees.service_fee_pct", "changes.no_such_key"]
    assert server.client.get_config()["business"]["fees"]["service_fee_pct"] == 0.02
    assert len(server.client.config_history().changes) == 1


def test_admin_status_and_invalidation(server):
    server.client.generate_offers(customer_id=STORED)
    status = server.client.status()
    assert status.database_reachable and status.circuit_state == "closed"
    cars = len(golden.inventory())
    assert status.engine_implementation in ("compiled", "python") and status.inventory_cars == cars
    assert status.database_backend in ("sqlite", "mysql") and status.cache_hits >= 1
    version = status.inventory_version
    assert server.client.invalidate_cache() >= 1
    status = server.client.status()  # reloaded at once, under a new version every process follows
    assert status.inventory_cars == cars and status.inventory_version > version
    assert server.client.generate_offers(customer_id=STORED).summary.inventory_version == status.inventory_version


def hold_a_call(client, customer: str, release: threading.Event, caller: str = ""):
    """A GenerateOffersBulk call that has answered once and stays open until `release` is set."""
    def requests():
        yield pb.GenerateOffersBulkRequest(customer_id=customer)
        release.wait(10)
    stream = client.offers.GenerateOffersBulk(requests(), timeout=20,
                                              metadata=(("x-caller-id", caller),) if caller else None)
    next(stream)
    return stream


def test_streams_beyond_the_limits_are_refused_and_idle_ones_hold_no_worker(golden_database, tmp_path):
    """An open stream waiting for its client counts against max_streams and its caller's
    max_streams_per_caller, never against the workers: unary calls go on being served."""
    from conftest import start_server
    running = start_server(golden_database[1], TRADEUP_MAX_STREAMS=2, TRADEUP_MAX_STREAMS_PER_CALLER=1,
                           TRADEUP_MAX_WORKERS=1, TRADEUP_RATE_LIMIT_KEY="x-caller-id")
    release = threading.Event()
    request = pb.StreamOffersRequest(customer_id=STORED)
    try:
        first = hold_a_call(running.client, STORED, release, caller="a")
        with pytest.raises(grpc.RpcError) as err:
            list(running.client.offers.StreamOffers(request, metadata=(("x-caller-id", "a"),), timeout=5))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams open" in err.value.details()
        second = hold_a_call(running.client, STORED, release, caller="b")
        with pytest.raises(grpc.RpcError) as err:
            list(running.client.offers.StreamOffers(request, metadata=(("x-caller-id", "c"),), timeout=5))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 streams" in err.value.details()
        # Both streams are idle: the only worker is free for unary calls.
        assert running.client.generate_offers(customer_id=STORED, timeout=5).summary.customer_id == STORED
        assert running.client.health(timeout=2) == "SERVING"
        release.set()
        assert list(first) == [] and list(second) == []
        assert len(list(running.client.offers.StreamOffers(request, timeout=5))) >= 1  # places given back
    finally:
        release.set()
        running.stop()


def test_graceful_shutdown_lets_a_running_stream_finish(golden_database, tmp_path):
    from conftest import start_server
    running = start_server(golden_database[1],
                           TRADEUP_STREAM_BATCH_SIZE=1)
    record = max(golden.offers(), key=lambda r: len(r["cars"]))
    cars = min(300, len(record["cars"]))
    stream = running.client.find_minimum_subsidy(customer_id=record["customer_id"], max_cars=cars, timeout=30)
    first = next(stream)
    stopper = threading.Thread(target=running.app.stop, kwargs={"grace": 20})
    stopper.start()
    time.sleep(0.3)
    assert running.app.monitor.shutting_down
    rest = list(stream)
    assert len([first, *rest]) == cars and [first, *rest][-1].cars_searched == cars
    stopper.join(30)
    assert running.app.stopped.is_set()
    with pytest.raises(grpc.RpcError) as err:
        running.client.generate_offers(customer_id=record["customer_id"], timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    running.client.close()


INJECTIONS = ("' OR '1'='1", "C0001'; DROP TABLE inventory; --", "x' UNION SELECT customer_id FROM customers --",
              "\\'; DELETE FROM customers; --", "%", "Robert'); DROP TABLE customers;--")


def test_injection_strings_in_every_string_field_are_inert(server):
    customer = golden.customer_with_offers()
    before = server.app.repository.counts()
    for text in INJECTIONS:
        with pytest.raises(grpc.RpcError) as err:
            server.client.generate_offers(customer_id=text)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        profile = {**PROFILE, "customer_id": text, "region": text, "risk_profile_name": text[:16]}
        response = server.client.generate_offers(profile=profile, same_region=True)
        assert response.summary.cars_evaluated == 0 and response.summary.customer_id == text
        with pytest.raises(grpc.RpcError) as err:
            list(server.client.find_minimum_subsidy(customer_id=customer, car_ids=[text]))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            server.client.amortization(text, 48, customer_id=customer)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert server.app.repository.counts() == before
    assert server.client.generate_offers(customer_id=customer).summary.total_offers == \
        len(golden.offers_of(customer)["offers"])


def test_a_changed_customer_is_priced_fresh_on_the_next_call(server):
    from dataclasses import replace
    customer = golden.customer_with_offers()
    original = server.app.repository.get_customer(customer)
    try:
        first = server.client.generate_offers(customer_id=customer)
        server.app.repository.put_customers([replace(original, current_monthly_payment=original.current_monthly_payment * 2)])
        second = server.client.generate_offers(customer_id=customer)
        deltas = lambda r: {offer_key(o): o.payment_delta for g in r.groups for o in g.offers}  # noqa: E731
        assert deltas(first) != deltas(second)
        common = set(deltas(first)) & set(deltas(second))
        assert all(deltas(second)[k] < deltas(first)[k] for k in common)
    finally:
        server.app.repository.put_customers([original])


def test_every_log_line_of_a_call_carries_its_request_id(server, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="tradeup.access"):
        server.client.generate_offers(customer_id=STORED, metadata=(("x-request-id", "trace-42"),))
        with pytest.raises(grpc.RpcError):
            server.client.generate_offers(customer_id="NOPE", metadata=(("x-request-id", "trace-43"),))
    lines = {r.request_id: r.getMessage() for r in caplog.records if r.name == "tradeup.access"}
    assert "GenerateOffers OK" in lines["trace-42"] and "GenerateOffers NOT_FOUND" in lines["trace-43"]


def test_a_bug_is_internal_with_a_generic_message_and_a_logged_traceback(server, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(server.app.offers, "generate", broken)  # a fault injected into our own code
    with pytest.raises(grpc.RpcError) as err:
        server.client.generate_offers(customer_id=STORED, metadata=(("x-request-id", "bug-1"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal server error (request id bug-1)"  # nothing internal leaks
    (record,) = [r for r in caplog.records if r.name == "tradeup.errors"]
    assert record.request_id == "bug-1" and record.exc_info[0] is ZeroDivisionError
