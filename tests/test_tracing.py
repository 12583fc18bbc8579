"""OpenTelemetry traces: a server span per call that continues the caller's trace, with child spans
for the layers and every SQL statement, the trace id on the call's log lines, nothing from the
background; off unless the OTEL_* variables ask; and a real export over OTLP/gRPC, by a
`python -m server` process, to a collector this test serves on loopback."""
from __future__ import annotations

import json
import logging
import secrets
import signal
import sqlite3
import threading
import time
from concurrent import futures
from contextlib import closing

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import golden_data as golden
from conftest import RunningServer, make_settings
from server import tracing
from server.errors import ConfigError
from server.metrics import Metrics
from server.rpc.interceptors import CallTracing
from server.rpc.server import CallInterceptors
from test_lifecycle import ServerProcess

GENERATE = "tradeup.v1.OfferService/GenerateOffers"
LAYERS = ("load customer", "prefilter", "pricing", "encode")


def wait_for(condition, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.01)
    return found


@pytest.fixture
def traced(golden_database, redis_server):
    """A real server, its rate limit shared through Redis, whose spans go to an in-memory
    exporter: (server, exporter)."""
    from server.app import Application
    exporter = InMemorySpanExporter()
    settings = make_settings({**golden_database[1], "TRADEUP_REDIS_URL": redis_server.url,
                              "TRADEUP_RATE_LIMIT_PER_SECOND": "1000"})
    app = Application(settings, tracing=tracing.Tracing(tracing.tracer_provider(SimpleSpanProcessor(exporter))))
    app.start()
    running = RunningServer(app)
    yield running, exporter
    running.stop()


def test_calls_continue_the_callers_trace_with_a_span_per_layer(traced, caplog):
    server, exporter = traced
    caplog.set_level(logging.INFO, logger="tradeup.access")
    caller = TracerProvider().get_tracer("caller")
    customer = golden.customer_with_offers()
    with caller.start_as_current_span("caller") as caller_span:  # the client library sends its context
        server.client.generate_offers(customer_id=customer, metadata=(("x-request-id", "traced-1"),))
        streamed = list(server.client.stream_offers(customer_id=customer))
    with pytest.raises(grpc.RpcError):  # no caller span: the server starts a trace
        server.client.generate_offers(customer_id="NOPE")
    assert server.client.health() == "SERVING"
    def calls():
        return [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    wait_for(lambda: len(calls()) == 3)
    spans = exporter.get_finished_spans()
    expected = caller_span.get_span_context()

    generate, stream, missing = sorted(calls(), key=lambda s: (s.attributes["rpc.grpc.status_code"], s.name))
    assert (generate.name, stream.name, missing.name) == (GENERATE, "tradeup.v1.OfferService/StreamOffers", GENERATE)
    for call in (generate, stream):
        assert call.context.trace_id == expected.trace_id
        assert call.parent.span_id == expected.span_id and call.parent.is_remote
    assert dict(generate.attributes) == {"rpc.system": "grpc", "rpc.service": "tradeup.v1.OfferService",
                                         "rpc.method": "GenerateOffers", "rpc.grpc.status_code": 0}
    assert missing.parent is None and missing.context.trace_id != expected.trace_id
    assert missing.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status.is_ok  # the caller's mistake, not the server's failure

    def children(parent) -> dict[str, list]:
        found: dict[str, list] = {}
        for span in spans:
            if span.parent is not None and span.parent.span_id == parent.context.span_id:
                found.setdefault(span.name, []).append(span)
        return found

    layers = children(generate)
    redis = [span for name in set(layers) - set(LAYERS) for span in layers.pop(name)]  # the shared rate limit
    assert "EVALSHA" in {span.name for span in redis}  # after SCRIPT LOAD on the first call
    assert all(span.kind is trace.SpanKind.CLIENT and span.attributes["db.system"] == "redis" for span in redis)
    assert set(layers) == set(LAYERS)
    assert all(span.context.trace_id == expected.trace_id for group in layers.values() for span in group)
    (read,) = layers["load customer"]
    (statement,) = [s for group in children(read).values() for s in group]
    assert statement.kind is trace.SpanKind.CLIENT and "FROM customers" in statement.attributes["db.statement"]
    assert len(children(stream)["encode"]) == len(streamed)
    assert {s.name for s in spans if s.context.trace_id == missing.context.trace_id} == {
        GENERATE, "EVALSHA", "load customer", "SELECT"}
    # Nothing from the change feed's polls or the health checks: every span belongs to a call.
    assert {s.context.trace_id for s in spans} == {expected.trace_id, missing.context.trace_id}

    (access,) = [r for r in caplog.records if r.name == "tradeup.access" and r.request_id == "traced-1"]
    assert access.trace_id == format(expected.trace_id, "032x")
    assert access.span_id == format(generate.context.span_id, "016x")


def test_tracing_is_off_unless_the_variables_ask(monkeypatch):
    chain = CallInterceptors(make_settings({}), Metrics(), threading.Event()).chain
    assert not any(isinstance(interceptor, CallTracing) for interceptor in chain) and tracing._tracer is None
    assert not tracing.requested()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert tracing.requested()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing.requested()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.requested()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        tracing.requested()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.requested()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # the traces' own protocol wins
    assert tracing.requested()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector: keeps what it is sent."""

    def __init__(self):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector():
    """(collector, its endpoint) on a loopback port."""
    received = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield received, f"http://127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("golden_database", ["sqlite"], indirect=True)
def test_a_server_process_exports_over_otlp_grpc(collector, golden_database, tmp_path):
    received, endpoint = collector
    database = {"TRADEUP_SQLITE_PATH": str(tmp_path / "traced.db")}
    with closing(sqlite3.connect(golden_database[1]["TRADEUP_SQLITE_PATH"])) as golden_file, \
            closing(sqlite3.connect(database["TRADEUP_SQLITE_PATH"])) as copy:
        golden_file.backup(copy)
    # Batches wait a minute: what the collector gets, the stop sent.
    process = ServerProcess(tmp_path / "server", {**database, "TRADEUP_SEED_DEMO_DATA": "false",
                                                  "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                                  "OTEL_SERVICE_NAME": "tradeup-under-test",
                                                  "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    try:
        process.wait_serving()
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        with grpc.insecure_channel(process.target) as channel:
            channel.unary_unary(f"/{GENERATE}")(
                golden_request(), timeout=10, metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),))
        assert not received.requests
        process.stop_cleanly("SIGTERM with spans to export", signal.SIGTERM)
    finally:
        process.kill()
    resources = [r for request in received.requests for r in request.resource_spans]
    names = {a.key: a.value.string_value for r in resources for a in r.resource.attributes}
    assert names["service.name"] == "tradeup-under-test"
    spans = [s for r in resources for scope in r.scope_spans for s in scope.spans]
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    (call,) = [s for s in spans if s.name == GENERATE]
    assert call.parent_span_id.hex() == parent_id and call.kind == call.SPAN_KIND_SERVER
    assert {s.name for s in spans if s.parent_span_id == call.span_id} == set(LAYERS)
    assert any(s.name == "SELECT" for s in spans)
    lines = [json.loads(line) for line in process.log().splitlines()]
    (access,) = [line for line in lines if line["logger"] == "tradeup.access"]
    assert (access["trace_id"], access["span_id"]) == (trace_id, call.span_id.hex())
    assert any(line["message"].startswith("tracing on") and line["service_name"] == "tradeup-under-test"
               for line in lines)


def golden_request() -> bytes:
    from protos.tradeup.v1 import offers_pb2
    return offers_pb2.GenerateOffersRequest(customer_id=golden.customer_with_offers()).SerializeToString()
