"""Prometheus metrics of one server (prometheus-client, text exposition on an HTTP port).

Counts that the service already keeps (cache hits and misses, pool use, circuit state,
inventory size) are read at scrape time from the same `status()` the AdminService returns,
so the two always agree. Each server has its own registry.
"""
from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CIRCUIT_STATES = ("closed", "half_open", "open")


class StatusCollector(Collector):
    """Exports the figures of the admin status at each scrape."""

    def __init__(self, status: Callable[[], dict]):
        self.status = status

    def collect(self):
        status = self.status()
        cache = CounterMetricFamily("tradeup_cache_requests", "Cache lookups by cache and result",
                                    labels=["cache", "result"])
        for name, (hits, misses) in status["cache_counts"].items():
            cache.add_metric([name, "hit"], hits)
            cache.add_metric([name, "miss"], misses)
        yield cache
        pool = GaugeMetricFamily("tradeup_db_pool_connections", "Database connections by state", labels=["state"])
        pool.add_metric(["in_use"], status["pool_in_use"])
        pool.add_metric(["idle"], status["pool_idle"])
        yield pool
        circuit = GaugeMetricFamily("tradeup_circuit_breaker_state", "1 for the circuit breaker's current state",
                                    labels=["state"])
        for state in CIRCUIT_STATES:
            circuit.add_metric([state], 1.0 if status["circuit_state"] == state else 0.0)
        yield circuit
        yield GaugeMetricFamily("tradeup_database_up", "1 when the database answered the last health ping",
                                value=1.0 if status["database_reachable"] else 0.0)
        yield GaugeMetricFamily("tradeup_inventory_cars", "Cars in the cached inventory snapshot",
                                value=status["inventory_cars"])
        yield GaugeMetricFamily("tradeup_watch_streams", "WatchOffers streams open", value=status["watchers"])
        yield GaugeMetricFamily("tradeup_watch_groups", "Distinct (customer, request) groups of the open "
                                "WatchOffers streams, each priced once per change", value=status["watch_groups"])
        if status.get("redis_state", "off") != "off":
            yield GaugeMetricFamily("tradeup_redis_up", "1 while Redis answers; 0 while down (polling, local limits)",
                                    value=1.0 if status["redis_state"] == "up" else 0.0)


def split_method(method: str) -> tuple[str, str]:
    """"/tradeup.v1.OfferService/GenerateOffers" -> ("tradeup.v1.OfferService", "GenerateOffers")."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class RpcSeries:
    """The gRPC series of one method, labelled once."""

    def __init__(self, metrics: "Metrics", method: str, grpc_type: str):
        self.metrics = metrics
        self.labels = (grpc_type, *split_method(method))
        self.in_flight = metrics.in_flight.labels(method)
        self.started = metrics.started.labels(*self.labels)
        self.received = metrics.received.labels(*self.labels)
        self.handling = metrics.handling.labels(*self.labels)
        self.sent = metrics.sent.labels(*self.labels)
        self.one_request = grpc_type in ("unary", "server_stream")

    def call_started(self) -> None:
        self.in_flight.inc()
        self.started.inc()
        if self.one_request:
            self.received.inc()  # the one request; streams count theirs as they come

    def message_received(self) -> None:
        self.received.inc()

    def call_finished(self, code: str, seconds: float, messages_sent: int | None = None) -> None:
        """`messages_sent`: responses of a streaming call (a unary call sends one when OK)."""
        self.in_flight.dec()
        self.metrics.child(self.metrics.handled, *self.labels, code).inc()
        self.handling.observe(seconds)
        sent = (1 if code == "OK" else 0) if messages_sent is None else messages_sent
        if sent:
            self.sent.inc(sent)


class Metrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        # The standard gRPC server metrics, named and labelled as the Prometheus gRPC interceptors
        # (go-grpc-prometheus, py-grpc-prometheus) name them, so stock dashboards and alerts work.
        rpc = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started", "Total number of RPCs started on the server.", rpc,
                               registry=registry)
        self.handled = Counter("grpc_server_handled", "Total number of RPCs completed on the server, regardless "
                               "of success or failure.", rpc + ["grpc_code"], registry=registry)
        self.handling = Histogram("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
                                  "that had been application-level handled by the server.", rpc,
                                  buckets=LATENCY_BUCKETS, registry=registry)
        self.received = Counter("grpc_server_msg_received", "Total number of RPC stream messages received on the "
                                "server.", rpc, registry=registry)
        self.sent = Counter("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.", rpc,
                            registry=registry)
        # Ours.
        self.in_flight = Gauge("tradeup_rpc_in_flight", "RPCs being served now", ["method"], registry=registry)
        self.offers = Counter("tradeup_offers_generated", "Offers produced, by tier", ["tier"], registry=registry)
        self.cars = Counter("tradeup_cars_evaluated", "Prefiltered cars priced", registry=registry)
        self.rejected = Counter("tradeup_candidates_rejected", "Car x term candidates not offered, by reason",
                                ["reason"], registry=registry)
        self.engine = Histogram("tradeup_engine_duration_seconds", "Pricing and ranking time per request",
                                buckets=LATENCY_BUCKETS, registry=registry)
        self.queries = Histogram("tradeup_db_query_duration_seconds", "Database query time, by query",
                                 ["query"], buckets=LATENCY_BUCKETS, registry=registry)
        self._children: dict[tuple, Any] = {}
        self._http = None

    def watch_status(self, status: Callable[[], dict]) -> None:
        self.registry.register(StatusCollector(status))

    # --- hooks ------------------------------------------------------------------------------------
    def rpc(self, method: str, grpc_type: str = "unary") -> "RpcSeries":
        """The series of one method; `grpc_type`: unary, client_stream, server_stream or bidi_stream."""
        return RpcSeries(self, method, grpc_type)

    def offers_priced(self, tier_counts: dict[str, int], rejected: dict[str, int], cars: int,
                      engine_seconds: float) -> None:
        for tier, count in tier_counts.items():
            self.child(self.offers, tier).inc(count)
        for reason, count in rejected.items():
            self.child(self.rejected, reason).inc(count)
        self.cars.inc(cars)
        self.engine.observe(engine_seconds)

    def child(self, family, *values: str):
        """family.labels(*values), kept: labels() takes a lock and checks the values on every call."""
        key = (id(family), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*values)
        return child

    def query_done(self, query: str, seconds: float) -> None:
        self.child(self.queries, query).observe(seconds)

    # --- exposition -------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 = any free port); returns the port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
