"""Metrics scraped over HTTP move by exactly what the calls did (the standard gRPC server metrics
and ours); the admin status agrees; the dashboard charts them; logs keep customer ids unreadable."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import golden_data as golden
from conftest import LOG_HASH_KEY, ROOT, free_port, start_server

GENERATE = "/tradeup.v1.OfferService/GenerateOffers"


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start_observed(golden_database, **extra):
    return start_server(golden_database[1], TRADEUP_METRICS_PORT=free_port(), TRADEUP_METRICS_HOST="127.0.0.1",
                        **extra)


@pytest.fixture
def observed(golden_database, tmp_path):
    running = start_observed(golden_database)
    yield running
    running.stop()


def rpc(service: str, method: str, grpc_type: str = "unary", **more) -> dict:
    return {"grpc_type": grpc_type, "grpc_service": f"tradeup.v1.{service}", "grpc_method": method, **more}


def test_counters_and_histograms_move_exactly(observed):
    port = observed.app.metrics_port
    one, other = golden.customer_ids()[0], golden.customer_ids()[-1]
    observed.client.generate_offers(customer_id=one)  # warm the snapshot cache
    before = scrape(port)
    first = observed.client.generate_offers(customer_id=one)
    second = observed.client.generate_offers(customer_id=other, max_offers=5)
    with pytest.raises(grpc.RpcError):
        observed.client.generate_offers(customer_id="NOPE")
    after = scrape(port)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731

    generate = rpc("OfferService", "GenerateOffers")
    assert delta("grpc_server_started_total", **generate) == 3
    assert delta("grpc_server_handled_total", **generate, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **generate, grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_handling_seconds_count", **generate) == 3
    assert delta("grpc_server_handling_seconds_bucket", **generate, le="+Inf") == 3
    assert delta("grpc_server_msg_received_total", **generate) == 3
    assert delta("grpc_server_msg_sent_total", **generate) == 2
    assert value(after, "tradeup_rpc_in_flight", method=GENERATE) == 0
    for tier, field in (("Refresh", "refresh_count"), ("Upgrade", "upgrade_count"), ("Max Upgrade", "max_upgrade_count")):
        assert delta("tradeup_offers_generated_total", tier=tier) == \
            getattr(first.summary, field) + getattr(second.summary, field)
    cars = first.summary.cars_evaluated + second.summary.cars_evaluated
    assert delta("tradeup_cars_evaluated_total") == cars
    offered = sum(delta("tradeup_offers_generated_total", tier=t) for t in ("Refresh", "Upgrade", "Max Upgrade"))
    rejected = sum(delta("tradeup_candidates_rejected_total", reason=r) for r in (
        "down_payment_not_met", "loan_not_positive", "delta_below_floor", "delta_above_ceiling"))
    assert offered + rejected == 6 * cars
    assert delta("tradeup_candidates_rejected_total", reason="delta_above_ceiling") == \
        first.summary.rejected.delta_above_ceiling + second.summary.rejected.delta_above_ceiling
    assert delta("tradeup_engine_duration_seconds_count") == 2
    assert delta("tradeup_db_query_duration_seconds_count", query="get_customer") == 3
    assert delta("tradeup_cache_requests_total", cache="inventory", result="hit") == 2
    assert delta("tradeup_cache_requests_total", cache="inventory", result="miss") == 0
    assert value(after, "tradeup_circuit_breaker_state", state="closed") == 1
    assert value(after, "tradeup_database_up") == 1
    assert value(after, "tradeup_inventory_cars") == len(golden.inventory())
    assert ("tradeup_db_pool_connections", (("state", "idle"),)) in after


def test_streams_count_their_messages(golden_database):
    observed = start_observed(golden_database, TRADEUP_STREAM_BATCH_SIZE=1)  # a message per offer
    customer = golden.customer_with_offers(2)
    try:
        before = scrape(observed.app.metrics_port)
        streamed = list(observed.client.stream_offers(customer_id=customer, max_offers=5))
        bulk = list(observed.client.generate_offers_bulk([{"customer_id": customer, "max_offers": 1},
                                                          {"customer_id": "NOPE"},
                                                          {"customer_id": golden.customer_ids()[-1]}]))
        after = scrape(observed.app.metrics_port)
    finally:
        observed.stop()
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731

    stream = rpc("OfferService", "StreamOffers", "server_stream")
    assert delta("grpc_server_started_total", **stream) == 1
    assert delta("grpc_server_handled_total", **stream, grpc_code="OK") == 1
    assert delta("grpc_server_msg_received_total", **stream) == 1
    assert delta("grpc_server_msg_sent_total", **stream) == len(streamed) > 1
    bidi = rpc("OfferService", "GenerateOffersBulk", "bidi_stream")
    assert delta("grpc_server_started_total", **bidi) == 1
    assert delta("grpc_server_handled_total", **bidi, grpc_code="OK") == 1  # a bad customer is an entry
    assert delta("grpc_server_msg_received_total", **bidi) == 3
    assert delta("grpc_server_msg_sent_total", **bidi) == len(bulk) == 3


def test_grafana_dashboard_charts_metrics_the_server_exports(observed):
    """Every series the dashboard queries is one the server exports (after one call of each kind)."""
    observed.client.generate_offers(customer_id=golden.customer_ids()[0], max_offers=1)
    list(observed.client.stream_offers(customer_id=golden.customer_ids()[0], max_offers=1))
    exported = {name for name, _ in scrape(observed.app.metrics_port)}
    dashboard = json.loads((ROOT / "deploy/grafana/tradeup-engine.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    queried = {name for panel in panels for target in panel["targets"]
               for name in re.findall(r"\b(?:grpc_server|tradeup)_[a-z_]+", target["expr"])}
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
            "grpc_server_started_total"} <= queried
    assert queried <= exported, f"not exported: {sorted(queried - exported)}"
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in panels)


def test_customer_ids_are_logged_as_a_keyed_hash(observed, caplog):
    caplog.set_level(logging.INFO, logger="tradeup.access")
    customer = golden.customer_ids()[0]
    observed.client.generate_offers(customer_id=customer, max_offers=1, metadata=(("x-request-id", "hash-1"),))
    (access,) = [r for r in caplog.records if r.name == "tradeup.access" and r.request_id == "hash-1"]
    assert access.customer == hmac.new(LOG_HASH_KEY.encode(), customer.encode(), hashlib.sha256).hexdigest()[:16]
    assert access.customer != hashlib.sha256(customer.encode()).hexdigest()[:16]


def test_without_a_hash_key_customer_ids_are_left_out(golden_database, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    running = start_server(golden_database[1], TRADEUP_LOG_HASH_KEY="")
    try:
        running.client.generate_offers(customer_id=golden.customer_with_offers(), max_offers=1,
                                       metadata=(("x-request-id", "nokey-1"),))
    finally:
        running.stop()
    assert any(r.levelno == logging.WARNING and "TRADEUP_LOG_HASH_KEY" in r.getMessage() for r in caplog.records)
    (access,) = [r for r in caplog.records if r.name == "tradeup.access" and r.request_id == "nokey-1"]
    assert not hasattr(access, "customer") and access.offers == 1


def test_database_reachable_is_info_not_warning(golden_database, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tradeup.server")
    running = start_server(golden_database[1])
    running.stop()
    (reachable,) = [r for r in caplog.records if r.getMessage() == "database reachable: serving"]
    assert reachable.levelno == logging.INFO


def test_admin_status_reads_the_same_figures(observed):
    observed.client.generate_offers(customer_id=golden.customer_ids()[0])
    samples = scrape(observed.app.metrics_port)
    status = observed.client.status()
    hits = sum(value(samples, "tradeup_cache_requests_total", cache=c, result="hit") for c in ("inventory", "prefilter"))
    misses = sum(value(samples, "tradeup_cache_requests_total", cache=c, result="miss")
                 for c in ("inventory", "prefilter"))
    assert (status.cache_hits, status.cache_misses) == (hits, misses)
    assert status.inventory_cars == value(samples, "tradeup_inventory_cars")
    assert value(samples, "tradeup_circuit_breaker_state", state=status.circuit_state) == 1


def test_metrics_are_off_by_default(server):
    assert server.app.metrics_port == 0
