"""Each interceptor alone, in front of a small service of its own on a real gRPC server: one job
each (server/rpc/interceptors.py)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from client import error_details
from conftest import free_port
from server.errors import InvalidArgument
from server.metrics import Metrics
from server.rpc.interceptors import (AccessLog, Admission, CallMetrics, CallPipeline, CallTracing, DefaultDeadline,
                                     ErrorMapping, RateLimit, RequestIds, note_call)
from server.services.ratelimit import TokenBuckets

SERVICE = "test.Echo"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def echo(request: bytes, context) -> bytes:
    if request == b"invalid":
        raise InvalidArgument("must not be 'invalid'", "text")
    if request == b"bug":
        raise ZeroDivisionError("a bug")
    note_call(customer="C-1")
    return request


def nap(request: bytes, context) -> bytes:
    time.sleep(0.1)
    return request


def echo_stream(request: bytes, context):
    for part in request.split(b","):
        yield part


HOLD = threading.Event()


def hold(request: bytes, context) -> bytes:
    HOLD.wait(10)
    return request


def flood(request: bytes, context):
    for _ in range(10_000):  # far more than a reader that stopped reading takes in
        yield b"x" * 100_000


def echo_each(requests, context):
    for request in requests:
        yield request


def handlers() -> list[grpc.GenericRpcHandler]:
    return [grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(echo),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "Nap": grpc.unary_unary_rpc_method_handler(nap),
        "Stream": grpc.unary_stream_rpc_method_handler(echo_stream),
        "Flood": grpc.unary_stream_rpc_method_handler(flood),
        "Each": grpc.stream_stream_rpc_method_handler(echo_each),
    }), grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(echo)})]


@pytest.fixture
def serve():
    """serve(*interceptors) -> a channel to a server running them in front of the echo service."""
    running = []

    def start(*interceptors):
        server = grpc.server(futures.ThreadPoolExecutor(8), interceptors=[CallPipeline(list(interceptors))])
        server.add_generic_rpc_handlers(handlers())
        port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        running.append((server, channel))
        return channel
    yield start
    for server, channel in running:
        channel.close()
        server.stop(None)


def unary(channel, path=f"/{SERVICE}/Unary"):
    return channel.unary_unary(path)


def test_request_ids_travel_in_trailers_and_with_a_streams_first_message(serve):
    channel = serve(RequestIds())
    _, call = unary(channel).with_call(b"hi", metadata=(("x-request-id", "abc-1"),), timeout=5)
    assert dict(call.trailing_metadata())["x-request-id"] == "abc-1" and not call.initial_metadata()
    _, call = unary(channel).with_call(b"hi", metadata=(("x-request-id", "bad id!"),), timeout=5)
    assert len(dict(call.trailing_metadata())["x-request-id"]) == 32  # an id it cannot log is replaced
    stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"a,b", metadata=(("x-request-id", "s-1"),), timeout=5)
    assert list(stream) == [b"a", b"b"]
    assert ("x-request-id", "s-1") in stream.initial_metadata() and ("x-request-id", "s-1") in stream.trailing_metadata()


def test_call_tracing_ends_each_calls_span_with_its_status(serve):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    channel = serve(CallTracing(provider.get_tracer("test")), ErrorMapping())
    assert unary(channel)(b"hi", timeout=5) == b"hi"
    with pytest.raises(grpc.RpcError):
        unary(channel)(b"bug", timeout=5)
    assert unary(channel, HEALTH_CHECK)(b"probe", timeout=5) == b"probe"  # probes are not traced
    stream = channel.unary_stream(f"/{SERVICE}/Flood")(b"", timeout=5)
    next(stream)
    stream.cancel()  # the client leaves: the server's generator is closed under it
    assert wait_until(lambda: len(exporter.get_finished_spans()) == 3)
    spans = exporter.get_finished_spans()
    assert [(s.name, s.kind, s.attributes["rpc.grpc.status_code"], s.status.status_code) for s in spans] == [
        (f"{SERVICE}/Unary", SpanKind.SERVER, 0, StatusCode.UNSET),
        (f"{SERVICE}/Unary", SpanKind.SERVER, grpc.StatusCode.INTERNAL.value[0], StatusCode.ERROR),
        (f"{SERVICE}/Flood", SpanKind.SERVER, grpc.StatusCode.CANCELLED.value[0], StatusCode.UNSET)]
    assert all(s.parent is None for s in spans)  # no traceparent sent: each call starts a trace


def test_the_access_log_has_one_line_per_call_at_sample_1_and_never_for_probes(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="tradeup.access")
    channel = serve(AccessLog(log_customer_ids=True, sample=1.0))
    unary(channel)(b"hi", timeout=5)
    unary(channel, HEALTH_CHECK)(b"hi", timeout=5)
    list(channel.unary_stream(f"/{SERVICE}/Stream")(b"a,b", timeout=5))
    lines = [(r.method, r.code, getattr(r, "customer", None)) for r in caplog.records if r.name == "tradeup.access"]
    assert lines == [(f"/{SERVICE}/Unary", "OK", "C-1"), (f"/{SERVICE}/Stream", "OK", None)]


def test_the_access_log_samples_successes_and_keeps_every_failure_and_slow_call(serve, caplog):
    caplog.set_level(logging.INFO, logger="tradeup.access")
    channel = serve(AccessLog(sample=0.1, slow_seconds=0.05), ErrorMapping())
    for k in range(30):
        unary(channel)(b"hi", metadata=(("x-request-id", f"ok-{k}"),), timeout=5)
    for k in range(3):
        with pytest.raises(grpc.RpcError):
            unary(channel)(b"invalid", timeout=5)
    unary(channel, f"/{SERVICE}/Nap")(b"zz", timeout=5)
    codes = Counter((r.method.rsplit("/", 1)[1], r.code) for r in caplog.records if r.name == "tradeup.access")
    assert codes == {("Unary", "OK"): 3, ("Unary", "INVALID_ARGUMENT"): 3, ("Nap", "OK"): 1}
    caplog.clear()
    channel = serve(AccessLog(sample=0.0), ErrorMapping())
    for _ in range(20):
        unary(channel)(b"hi", timeout=5)
    assert not [r for r in caplog.records if r.name == "tradeup.access"]


def test_call_metrics_count_calls_codes_and_messages(serve):
    metrics = Metrics()
    channel = serve(CallMetrics(metrics), ErrorMapping())
    unary(channel)(b"hi", timeout=5)
    with pytest.raises(grpc.RpcError):
        unary(channel)(b"invalid", timeout=5)
    list(channel.stream_stream(f"/{SERVICE}/Each")(iter([b"x", b"y", b"z"]), timeout=5))

    def sample(name, **labels):
        return metrics.registry.get_sample_value(name, {"grpc_service": SERVICE, **labels})
    assert sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Unary", grpc_code="OK") == 1
    assert sample("grpc_server_handled_total", grpc_type="unary", grpc_method="Unary",
                  grpc_code="INVALID_ARGUMENT") == 1
    assert sample("grpc_server_msg_received_total", grpc_type="bidi_stream", grpc_method="Each") == 3
    assert sample("grpc_server_msg_sent_total", grpc_type="bidi_stream", grpc_method="Each") == 3


def test_errors_map_to_their_codes_and_bugs_to_internal(serve, caplog):
    channel = serve(RequestIds(), ErrorMapping())
    with pytest.raises(grpc.RpcError) as err:
        unary(channel)(b"invalid", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == "text: must not be 'invalid'"
    with pytest.raises(grpc.RpcError) as err:
        unary(channel)(b"bug", metadata=(("x-request-id", "bug-7"),), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal server error (request id bug-7)"  # no exception text leaks
    assert error_details(err.value).reason == "INTERNAL"
    assert any(r.name == "tradeup.errors" and r.exc_info and r.request_id == "bug-7" for r in caplog.records)


def test_admission_refuses_until_ready_beyond_limits_and_while_draining(serve):
    ready = threading.Event()
    admission = Admission(calls=1, streams=2, per_caller_streams=1, ready=ready, caller_key="x-caller-id")
    channel = serve(ErrorMapping(), admission)
    with pytest.raises(grpc.RpcError) as err:
        unary(channel)(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "starting" in err.value.details()
    assert error_details(err.value).reason == "STARTING"
    assert unary(channel, HEALTH_CHECK)(b"hi", timeout=5) == b"hi"  # probes are never held back
    ready.set()
    release = threading.Event()

    def held():
        yield b"first"
        release.wait(10)
    each = channel.stream_stream(f"/{SERVICE}/Each")
    first = each(held(), metadata=(("x-caller-id", "a"),), timeout=10)
    assert next(first) == b"first"
    with pytest.raises(grpc.RpcError) as err:  # a second stream of the same caller
        list(each(iter([b"x"]), metadata=(("x-caller-id", "a"),), timeout=5))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 streams open" in err.value.details()
    assert error_details(err.value).reason == "TOO_MANY_CALLER_STREAMS"
    second = each(held(), metadata=(("x-caller-id", "b"),), timeout=10)
    assert next(second) == b"first"
    with pytest.raises(grpc.RpcError) as err:  # a third caller's, beyond the process's stream limit
        list(each(iter([b"x"]), metadata=(("x-caller-id", "c"),), timeout=5))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 streams in progress" in err.value.details()
    assert error_details(err.value).reason == "TOO_MANY_STREAMS"
    assert unary(channel)(b"hi", timeout=5) == b"hi"  # open streams take no place of a unary call
    release.set()
    assert list(first) == [] and list(second) == []
    HOLD.clear()
    held = unary(channel, f"/{SERVICE}/Hold").future(b"held", timeout=10)
    assert wait_until(lambda: admission.in_progress == 1)
    with pytest.raises(grpc.RpcError) as err:  # the one unary place is taken
        unary(channel)(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 calls in progress" in err.value.details()
    assert error_details(err.value).reason == "TOO_MANY_CALLS"
    HOLD.set()
    assert held.result() == b"held"
    assert admission.in_progress == 0
    assert admission.drain(1)
    with pytest.raises(grpc.RpcError) as err:
        unary(channel)(b"hi", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
    assert error_details(err.value).reason == "SHUTTING_DOWN"


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_rate_limit_takes_a_token_per_call_and_per_streamed_request(serve):
    channel = serve(ErrorMapping(), RateLimit(TokenBuckets(rate=0.001, burst=3)))
    assert unary(channel)(b"hi", timeout=5) == b"hi"
    answered = []
    with pytest.raises(grpc.RpcError) as err:
        for message in channel.stream_stream(f"/{SERVICE}/Each")(iter([b"1", b"2", b"3"]), timeout=5):
            answered.append(message)
    assert answered == [b"1", b"2"]
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_ms = int(dict(err.value.trailing_metadata())["retry-after-ms"])
    assert retry_ms > 0 and error_details(err.value).retry_after == retry_ms / 1000  # in a stream too
    assert unary(channel, HEALTH_CHECK)(b"hi", timeout=5) == b"hi"  # probes are never limited


def test_a_request_that_does_not_decode_is_invalid_argument(serve):
    from protos.tradeup.v1 import offers_pb2 as pb
    server_handlers = [grpc.method_handlers_generic_handler(SERVICE, {
        "Typed": grpc.unary_unary_rpc_method_handler(lambda request, context: request.SerializeToString(),
                                                     request_deserializer=pb.GenerateOffersRequest.FromString),
        "TypedEach": grpc.stream_stream_rpc_method_handler(
            lambda requests, context: (r.customer_id.encode() for r in requests),
            request_deserializer=pb.GenerateOffersRequest.FromString)})]
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[CallPipeline([ErrorMapping()])],
                         handlers=server_handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            good = pb.GenerateOffersRequest(customer_id="C1").SerializeToString()
            assert unary(channel, f"/{SERVICE}/Typed")(good, timeout=5) == good
            with pytest.raises(grpc.RpcError) as err:
                unary(channel, f"/{SERVICE}/Typed")(b"\xff\xff\xff garbage", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("request: not a valid message")
            assert error_details(err.value).reason == "MALFORMED_REQUEST"
            each = channel.stream_stream(f"/{SERVICE}/TypedEach")
            answered = []
            with pytest.raises(grpc.RpcError) as err:
                for message in each(iter([good, b"\xff\xff\xff garbage"]), timeout=5):
                    answered.append(message)
            assert answered == [b"C1"] and err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(None)


def test_a_stream_without_a_deadline_is_cancelled_at_the_default(serve):
    default = DefaultDeadline(0.5, exempt=frozenset({f"/{SERVICE}/Each"}))
    release = threading.Event()

    def idle():
        yield b"first"
        release.wait(10)

    def paced():  # 1.2 s in all, a message every 0.15 s
        for k in range(8):
            time.sleep(0.15)
            yield str(k).encode()
    try:
        channel = serve(default)
        # A reader that stopped: no deadline of its own, cancelled by the server after 0.5 s idle.
        started = time.monotonic()
        blocked = channel.unary_stream(f"/{SERVICE}/Flood")(b"")
        next(blocked)
        with pytest.raises(grpc.RpcError) as err:
            time.sleep(1)
            list(blocked)
        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert 0.5 < time.monotonic() - started  # not before its time
        # A stream that keeps moving lives on past the default; an exempt one stays open idle.
        moving = channel.stream_stream(f"/{SERVICE}/Each")(iter(paced()))
        assert len(list(moving)) == 8
        exempt = channel.stream_stream(f"/{SERVICE}/Each")(idle())
        assert next(exempt) == b"first"
        time.sleep(0.8)
        assert exempt.is_active()
        release.set()
        exempt.cancel()
    finally:
        release.set()
        default.close()
