"""Metrics scraped over HTTP move by exactly what the calls did; the admin status agrees."""
from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, start_server

GENERATE = "/tradeup.v1.OfferService/GenerateOffers"


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def observed(golden_database, tmp_path):
    running = start_server(golden_database[1],
                           TRADEUP_METRICS_PORT=free_port(), TRADEUP_METRICS_HOST="127.0.0.1")
    yield running
    running.stop()


def test_counters_and_histograms_move_exactly(observed):
    port = observed.app.metrics_port
    observed.client.generate_offers(customer_id="C0001")  # warm the snapshot cache
    before = scrape(port)
    first = observed.client.generate_offers(customer_id="C0001")
    second = observed.client.generate_offers(customer_id="C0002", max_offers=5)
    with pytest.raises(grpc.RpcError):
        observed.client.generate_offers(customer_id="NOPE")
    after = scrape(port)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731

    assert delta("tradeup_rpc_requests_total", method=GENERATE, code="OK") == 2
    assert delta("tradeup_rpc_requests_total", method=GENERATE, code="NOT_FOUND") == 1
    assert delta("tradeup_rpc_duration_seconds_count", method=GENERATE, code="OK") == 2
    assert delta("tradeup_rpc_duration_seconds_bucket", method=GENERATE, code="OK", le="+Inf") == 2
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
    assert value(after, "tradeup_database_up") == 1 and value(after, "tradeup_inventory_cars") == 4000
    assert ("tradeup_db_pool_connections", (("state", "idle"),)) in after


def test_admin_status_reads_the_same_figures(observed):
    observed.client.generate_offers(customer_id="C0001")
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
