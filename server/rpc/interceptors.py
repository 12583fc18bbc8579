"""The interceptors every call passes through, one job each: the trace (when tracing is on), the
request id, the access log, the metrics, the mapping of errors to status codes, admission and the
rate limit. The order they run in is `server.rpc.server.CallInterceptors`.

Each wraps a method's behaviour once (`CallInterceptor.wrap`), whatever the kind of method; a
wrapper of a streaming response is a generator that passes the messages on. A non-blocking
behaviour (WatchOffers: it holds no server thread, see `_Pump`) goes through the same wrappers.
"""
from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable, Iterator

import grpc
from opentelemetry import context as trace_context, propagate, trace
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from ..deadline import Deadline
from ..errors import DOMAIN, InvalidArgument, ResourceExhausted, ServiceError, Unavailable, milliseconds
from ..logs import customer_field, install_request_id_records, request_id_var
from ..services.ratelimit import TokenBuckets

access_log = logging.getLogger("tradeup.access")
errors_log = logging.getLogger("tradeup.errors")

# Probes and tooling: never rate limited or admitted, logged at DEBUG only.
UNLIMITED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# The handler constructor of each kind of method, by (request streaming, response streaming).
METHOD_HANDLERS = {(False, False): grpc.unary_unary_rpc_method_handler,
                  (False, True): grpc.unary_stream_rpc_method_handler,
                  (True, False): grpc.stream_unary_rpc_method_handler,
                  (True, True): grpc.stream_stream_rpc_method_handler}
_GRPC_TYPES = {(False, False): "unary", (False, True): "server_stream", (True, False): "client_stream",
               (True, True): "bidi_stream"}


def is_probe(method: str) -> bool:
    return method.startswith(UNLIMITED_PREFIXES)


def add_trailer(context: grpc.ServicerContext, key: str, value: str) -> None:
    """Add one trailing metadata entry to those already set (grpc's setter replaces them all)."""
    context.set_trailing_metadata((*(context.trailing_metadata() or ()), (key, value)))


def status_name(context: grpc.ServicerContext, failed: bool) -> str:
    """How the call ended: the code it was aborted with; else CANCELLED when the client left (a
    stream closed under its generator)."""
    code = context.code()
    if code is not None:
        return code.name
    return "CANCELLED" if failed or not context.is_active() else "OK"


def caller_of(context: grpc.ServicerContext, key: str) -> str:
    """Who is calling: the `key` metadata when set and sent, else the peer's address (any port)."""
    if key:
        for name, value in context.invocation_metadata():
            if name == key:
                return value
    return context.peer().rsplit(":", 1)[0]


class CallInterceptor:
    """One job around each method's behaviour, applied once per method by `CallPipeline`.
    `wrap(behavior, method, request_streaming, response_streaming)` returns the new behaviour, or
    None to leave the method as it is; `decoder(deserializer)` may replace the request
    deserializer. A non-blocking behaviour is wrapped as a streaming one, through a `_Pump`."""

    def wrap(self, behavior: Callable, method: str, request_streaming: bool, response_streaming: bool):
        raise NotImplementedError

    def decoder(self, deserializer: Callable | None) -> Callable | None:
        return deserializer

    def wrap_handler(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if getattr(behavior, "experimental_non_blocking", False):
            # The wrappers stack up as generators around the behaviour, run by one _Pump per call.
            messages, inner = getattr(behavior, "pumped", (_Pump.inner_messages, behavior))
            wrapped = self.wrap(messages, method, *kind)
            wrapped = wrapped and _Pump.behavior(wrapped, inner)
        else:
            wrapped = self.wrap(behavior, method, *kind)
        decoder = self.decoder(handler.request_deserializer)
        if wrapped is None and decoder is handler.request_deserializer:
            return handler
        return METHOD_HANDLERS[kind](wrapped or behavior, decoder, handler.response_serializer)


class CallPipeline(grpc.ServerInterceptor):
    """The call interceptors as one gRPC interceptor. gRPC runs a step of its Python pipeline for
    each of its interceptors on every call; this one wraps a method's handler with all of ours once
    (outermost first, in the order given) and then hands out the wrapped handler."""

    def __init__(self, interceptors: list[CallInterceptor]):
        self.interceptors = interceptors
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = continuation(handler_call_details)
            if handler is None:
                return None  # UNIMPLEMENTED: nothing is kept for a name a client made up
            for interceptor in reversed(self.interceptors):
                handler = interceptor.wrap_handler(handler, method)
            self._handlers[method] = handler
        return handler


_pump: contextvars.ContextVar["_Pump"] = contextvars.ContextVar("pump")


class _Box:
    """A message of a non-blocking behaviour on its way through the wrappers."""
    __slots__ = ("message",)

    def __init__(self, message):
        self.message = message


class _Pump:
    """One call of a non-blocking behaviour run through the wrappers written for streaming ones.

    gRPC calls a non-blocking behaviour once, as behavior(request, context, send), and holds no
    thread for it: the behaviour sends each message with send(message), which returns once the
    message is written, from any thread, and ends the call with send(None), or with send(error)
    as if it had raised `error` (ours: grpc's own callback takes None only). It sends its first
    message, or raises, before it returns, as a streaming behaviour's first step would.

    The wrappers' generator is advanced once for each message sent, on the sending thread, in
    the call's own contextvars context; what it yields goes on to grpc, what it raises or its
    end ends the call. Messages go through one at a time (`turn`): the first step, on the thread
    of the call, passes on what the behaviour sent meanwhile before any other, and what it raises
    ends the call as it would a blocking one."""

    __slots__ = ("inner", "context", "send", "inbox", "turn", "opener", "ended", "messages", "vars")

    def __init__(self, inner: Callable, context: grpc.ServicerContext, send: Callable):
        self.inner = inner
        self.context = context
        self.send = send
        self.inbox: list = []  # rarely more than one message: a list is the smallest
        self.turn = threading.Lock()
        self.opener: int | None = None  # the thread of the first step, while it runs
        self.ended = False
        self.messages: Iterator | None = None
        self.vars = contextvars.copy_context()
        self.vars.run(_pump.set, self)

    @staticmethod
    def behavior(wrapped: Callable, inner: Callable) -> Callable:
        """The non-blocking behaviour that runs `inner` through `wrapped`, the wrappers of
        `_Pump.inner_messages` (`pumped`: what the next interceptor wraps in turn)."""
        def call(request, context, send):
            pump = _Pump(inner, context, send)
            with pump.turn:
                pump.opener = threading.get_ident()
                pump.messages = pump.vars.run(wrapped, request, context)
                pump.step(first=True)
                while pump.inbox and not pump.ended:
                    pump.step()
                pump.opener = None
        call.experimental_non_blocking = True
        call.experimental_thread_pool = getattr(inner, "experimental_thread_pool", None)
        call.pumped = (wrapped, inner)
        return call

    @staticmethod
    def inner_messages(request, context) -> Iterator:
        """The inner behaviour as the wrappers see it: a generator of the messages it sends, each
        in a `_Box` that the pump empties once the message is sent, so that wrappers waiting for
        the next message (holding the last one) keep no large message alive."""
        pump = _pump.get()
        pump.inner(request, context, pump.push)
        while True:
            message = pump.inbox.pop(0)  # one per step; the first was sent before the behaviour returned
            if message is None:
                return
            if isinstance(message, BaseException):
                raise message
            message = _Box(message)
            yield message

    def push(self, message) -> None:
        if self.opener == threading.get_ident():  # sent during the first step: passed on after it
            self.inbox.append(message)
            return
        with self.turn:
            if not self.ended:
                self.inbox.append(message)
                self.step()

    def step(self, first: bool = False) -> None:
        try:
            out = self.vars.run(next, self.messages)
        except StopIteration:
            out = None
        except BaseException as error:
            if first:
                raise
            out = error
        self.ended = not isinstance(out, _Box)
        if not self.ended:
            self.send(out.message)
            out.message = None
            return
        if out is not None and self.context.code() is None:  # a bug of a wrapper outside the error mapping
            errors_log.error("unhandled error", exc_info=out)
            self.context.set_code(grpc.StatusCode.INTERNAL)
        self.send(None)  # ends the call: OK, or with the status set on the context


def around(response_streaming: bool, before: Callable, after: Callable, behavior: Callable) -> Callable:
    """`behavior` with before(request, context) -> state called first and after(state, failed)
    called last, however the call ends; `before` may replace the request (iterator)."""
    if response_streaming:
        def streaming(request, context):
            request, state = before(request, context)
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            finally:
                after(state, failed)
        return streaming

    def unary(request, context):
        request, state = before(request, context)
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            after(state, failed)
    return unary


# --- the trace -------------------------------------------------------------------------------------
# The codes that are the server's failure (OpenTelemetry's conventions for gRPC servers): ERROR spans.
_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


class CallTracing(CallInterceptor):
    """A server span per call (probes aside) that continues the caller's trace (W3C `traceparent`,
    or what OTEL_PROPAGATORS names) and ends with the call's status code. It is current while the
    call's code runs, so the spans that code starts and the records it logs belong to it.

    Ours rather than opentelemetry-instrumentation-grpc's server interceptor, which does not fit
    this framework: it builds a new handler on every call and wraps non-blocking handlers too
    (health's Watch would hold a server thread), keeps its span current across a stream's yields
    (in gRPC's code that sends the messages), and learns the status only from aborts made through
    its own context wrapper (a stream whose client left ends OK)."""

    def __init__(self, tracer: trace.Tracer):
        self.tracer = tracer

    def wrap(self, behavior, method, request_streaming, response_streaming):
        if is_probe(method):
            return None
        name = method.lstrip("/")
        service, rpc = name.split("/", 1)
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

        def start(context) -> tuple[trace_context.Context, trace.Span]:
            caller = propagate.extract(dict(context.invocation_metadata()))
            span = self.tracer.start_span(name, caller, trace.SpanKind.SERVER, attributes)
            return trace.set_span_in_context(span, caller), span

        def end(span: trace.Span, context, failed: bool) -> None:
            code = status_name(context, failed)
            span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[code].value[0])
            if code in _SERVER_FAULTS:
                details = (context.details() or b"").decode(errors="replace")
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code}: {details}"))
            span.end()

        if not response_streaming:
            def before(request, context):
                current, span = start(context)
                return request, (trace_context.attach(current), span, context)

            def after(state, failed):
                token, span, context = state
                trace_context.detach(token)
                end(span, context, failed)
            return around(False, before, after, behavior)

        def streaming(request, context):
            # Current during each step of the stream only, never across a yield.
            current, span = start(context)
            messages, failed = None, True
            try:
                messages = _within(current, behavior, request, context)
                while True:
                    try:
                        message = _within(current, next, messages)
                    except StopIteration:
                        break
                    yield message
                failed = False
            finally:
                if failed and hasattr(messages, "close"):  # closed early: the inner code ends within the trace
                    _within(current, messages.close)
                end(span, context, failed)
        return streaming


def _within(current: trace_context.Context, function: Callable, *args):
    """function(*args) with `current` as the current trace context."""
    token = trace_context.attach(current)
    try:
        return function(*args)
    finally:
        trace_context.detach(token)


# --- the request id --------------------------------------------------------------------------------
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds(CallInterceptor):
    """The caller's `x-request-id` (or a new one) on every log record of the call and back to the
    caller in the trailers, and with the first message of a stream. Never in headers before the
    first message: a client retries a call only while it has received no headers."""

    def __init__(self):
        install_request_id_records()  # records carry the id even where logging is set up otherwise (tests)

    def wrap(self, behavior, method, request_streaming, response_streaming):
        def request_id(context) -> str:
            for key, value in context.invocation_metadata():
                if key == "x-request-id" and _VALID_ID.match(value):
                    return value
            return uuid.uuid4().hex

        if response_streaming:
            def streaming(request, context):
                value = request_id(context)
                token = request_id_var.set(value)
                add_trailer(context, "x-request-id", value)
                try:
                    messages = behavior(request, context)
                    for first in messages:
                        context.send_initial_metadata((("x-request-id", value),))
                        yield first
                        break
                    yield from messages
                finally:
                    _reset(request_id_var, token)
            return streaming

        def unary(request, context):
            value = request_id(context)
            token = request_id_var.set(value)
            add_trailer(context, "x-request-id", value)
            try:
                return behavior(request, context)
            finally:
                _reset(request_id_var, token)
        return unary


def _reset(var: contextvars.ContextVar, token: contextvars.Token) -> None:
    try:
        var.reset(token)
    except ValueError:  # a stream closed from another context: nothing to restore
        pass


# --- the access log --------------------------------------------------------------------------------
_call_details: contextvars.ContextVar[dict | None] = contextvars.ContextVar("call_details", default=None)


def note_call(**details) -> None:
    """Add details (customer, offers) to the access-log line of the call being served."""
    current = _call_details.get()
    if current is not None:
        current.update(details)


class AccessLog(CallInterceptor):
    """A line for each failed call, each slow one (`slow_seconds` or longer) and one successful
    call in round(1 / `sample`): method, status, duration and what the servicer noted
    (note_call). The metrics count every call; a line per call at any rate costs a JSON record
    under the handler's lock (sample 1 restores it). Health and reflection are never logged.
    Customer ids are logged raw, as their HMAC under `hash_key`, or not at all (no key)."""

    def __init__(self, log_customer_ids: bool = False, hash_key: str = "", sample: float = 1.0,
                 slow_seconds: float = math.inf):
        self.log_customer_ids = log_customer_ids
        self.hash_key = hash_key
        self.every = round(1 / sample) if sample > 0 else 0  # successful calls per line; 0: none
        self.slow_seconds = slow_seconds
        self._calls = itertools.count(1)

    def wrap(self, behavior, method, request_streaming, response_streaming):
        if is_probe(method):
            return None

        def before(request, context):
            return request, (context, _call_details.set({}), time.perf_counter())

        def after(state, failed):
            context, token, started = state
            elapsed, code = time.perf_counter() - started, status_name(context, failed)
            if (code != "OK" or elapsed >= self.slow_seconds
                    or (self.every and next(self._calls) % self.every == 0)) and access_log.isEnabledFor(logging.INFO):
                self._log(logging.INFO, method, code, elapsed, _call_details.get() or {})
            _reset(_call_details, token)
        return around(response_streaming, before, after, behavior)

    def _log(self, level: int, method: str, code: str, elapsed: float, details: dict) -> None:
        details = dict(details)
        if "customer" in details:
            shown = customer_field(details.pop("customer"), self.hash_key, self.log_customer_ids)
            if shown is not None:
                details["customer"] = shown
        access_log.log(level, "%s %s %.2fms", method, code, elapsed * 1e3,
                       extra={"method": method, "code": code, "duration_ms": round(elapsed * 1e3, 3), **details})


# --- metrics ----------------------------------------------------------------------------------------
class CallMetrics(CallInterceptor):
    """grpc_server_* series: calls started, handled (by code), their duration, messages each way."""

    def __init__(self, metrics):
        self.metrics = metrics  # server.metrics.Metrics

    def wrap(self, behavior, method, request_streaming, response_streaming):
        series = self.metrics.rpc(method, _GRPC_TYPES[(request_streaming, response_streaming)])

        def counted(requests):
            for request in requests:
                series.message_received()
                yield request

        if response_streaming:
            def streaming(request, context):
                series.call_started()
                started, sent, failed = time.perf_counter(), 0, True
                try:
                    for response in behavior(counted(request) if request_streaming else request, context):
                        sent += 1
                        yield response
                    failed = False
                finally:
                    series.call_finished(status_name(context, failed), time.perf_counter() - started, sent)
            return streaming

        def before(request, context):
            series.call_started()
            return (counted(request) if request_streaming else request), (context, time.perf_counter())

        def after(state, failed):
            context, started = state
            series.call_finished(status_name(context, failed), time.perf_counter() - started)
        return around(False, before, after, behavior)


# --- errors -----------------------------------------------------------------------------------------
class Undecodable:
    """A request whose bytes are not a message of the method's type (gRPC itself would answer
    INTERNAL): the error mapping answers INVALID_ARGUMENT instead."""

    def __init__(self, error: Exception):
        self.error = error


class ErrorMapping(CallInterceptor):
    """Domain errors (server.errors) end the call with their code and message, and a request that
    does not decode ends INVALID_ARGUMENT; anything else is a bug: logged with its traceback, the
    client gets INTERNAL with the request id. A call whose client already left is not answered.
    Every error carries its google.rpc.Status in the `grpc-status-details-bin` trailer
    (error_status), and `retry-after-ms` when the server knows when to retry."""

    def decoder(self, deserializer):
        if deserializer is None:
            return None

        def decode(data: bytes):
            try:
                return deserializer(data)
            except Exception as exc:  # protobuf's DecodeError, or any other parse failure
                return Undecodable(exc)
        return decode

    def wrap(self, behavior, method, request_streaming, response_streaming):
        def decoded(request):
            if not request_streaming:
                _check_decoded(request)
                return request
            return (_check_decoded(message) for message in request)

        if response_streaming:
            def streaming(request, context):
                try:
                    yield from behavior(decoded(request), context)
                except Exception as exc:
                    self._fail(context, exc)
            return streaming

        def unary(request, context):
            try:
                return behavior(decoded(request), context)
            except Exception as exc:
                self._fail(context, exc)
        return unary

    @staticmethod
    def _fail(context: grpc.ServicerContext, exc: Exception) -> None:
        if context.code() is not None:
            raise exc  # aborted already
        if not context.is_active():  # nobody to answer: the abort only ends the call quietly
            context.abort(grpc.StatusCode.CANCELLED, "the client left")
        if not isinstance(exc, ServiceError):
            errors_log.error("unhandled error", exc_info=exc)
            exc = ServiceError(f"internal server error (request id {request_id_var.get()})")
        if exc.retry_after is not None:
            add_trailer(context, "retry-after-ms", str(milliseconds(exc.retry_after)))
        add_trailer(context, "grpc-status-details-bin", error_status(exc).SerializeToString())
        context.abort(grpc.StatusCode[exc.code], str(exc))


def error_status(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status of an error: ErrorInfo always; BadRequest with every field violation
    of an INVALID_ARGUMENT (PreconditionFailure for a FAILED_PRECONDITION); ResourceInfo of what a
    NOT_FOUND did not find; RetryInfo when the delay is known."""
    code = grpc.StatusCode[error.code]
    one_field = error.field is not None and len(error.violations) <= 1
    details = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN,
                                           metadata={"field": error.field} if one_field else {})]
    if error.violations and code is grpc.StatusCode.INVALID_ARGUMENT:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in error.violations]))
    elif error.violations and code is grpc.StatusCode.FAILED_PRECONDITION:
        details.append(error_details_pb2.PreconditionFailure(violations=[
            error_details_pb2.PreconditionFailure.Violation(type=error.reason, subject=v.field,
                                                            description=v.description)
            for v in error.violations]))
    if error.resource is not None:
        details.append(error_details_pb2.ResourceInfo(resource_type=error.resource.type,
                                                      resource_name=error.resource.name, description=str(error)))
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(milliseconds(error.retry_after))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=str(error))
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _check_decoded(request):
    if isinstance(request, Undecodable):
        raise InvalidArgument(f"not a valid message of the method's request type ({request.error})", "request",
                              reason="MALFORMED_REQUEST")
    return request


# --- the default deadline ---------------------------------------------------------------------------
class DefaultDeadline(CallInterceptor):
    """A stream without a deadline left waiting on its client for the server's default deadline
    (`seconds`) is cancelled: a client that stopped sending or reading does not hold its thread
    for good, while a long stream that goes on working lives on. A stream waits while it needs
    the client's next request and while a response waits for the client to read it; the rest of
    the time it works, and its work is bounded by its own deadline (server.deadline), like a
    unary call's. `exempt` streams are meant to wait (WatchOffers). One thread watches them all,
    in the order they are due."""

    def __init__(self, seconds: float, exempt: frozenset[str] = frozenset()):
        self.seconds = seconds
        self.exempt = exempt
        self._due: list[tuple[float, int, _Stream]] = []  # a heap
        self._count = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def wrap(self, behavior, method, request_streaming, response_streaming):
        if not (request_streaming or response_streaming) or is_probe(method) or method in self.exempt:
            return None

        def received(requests, stream: _Stream):
            requests = iter(requests)
            while True:
                stream.waits()
                try:
                    request = next(requests)
                except StopIteration:
                    return
                finally:
                    stream.works()
                yield request

        def before(request, context):
            if Deadline.of_stream(context) is not None:
                return request, None
            stream = _Stream(context)
            self._watch(stream, stream.since + self.seconds)
            return (received(request, stream) if request_streaming else request), stream

        def after(stream: _Stream | None, failed: bool) -> None:
            if stream is not None:
                stream.context = None  # ended: nothing to cancel, nothing kept alive

        if not response_streaming:
            return around(False, before, after, behavior)

        def streaming(request, context):
            request, stream = before(request, context)
            try:
                for response in behavior(request, context):
                    if stream is not None:
                        stream.waits()  # until the client takes it
                    yield response
                    if stream is not None:
                        stream.works()
            finally:
                after(stream, False)
        return streaming

    def _watch(self, stream: "_Stream", at: float) -> None:
        with self._changed:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="default-deadline", daemon=True)
                self._thread.start()
            self._push(stream, at)
            self._changed.notify()

    def _push(self, stream: "_Stream", at: float) -> None:
        self._count += 1
        heapq.heappush(self._due, (at, self._count, stream))

    def _run(self) -> None:
        with self._changed:
            while not self._closed:
                if not self._due:
                    self._changed.wait()
                    continue
                at, _, stream = self._due[0]
                now = time.monotonic()
                if at > now:
                    self._changed.wait(at - now)
                    continue
                heapq.heappop(self._due)
                context = stream.context
                if context is None:
                    continue
                if not stream.waiting:  # working: its own deadline ends the work; look again later
                    self._push(stream, now + self.seconds)
                elif stream.since + self.seconds > now:  # waiting again since: due later
                    self._push(stream, stream.since + self.seconds)
                elif context.is_active():
                    context.cancel()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._due.clear()
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=1)


class _Stream:
    """A stream watched by DefaultDeadline: its call while open, whether it waits on its client
    and since when it waits or works."""
    __slots__ = ("context", "waiting", "since")

    def __init__(self, context: grpc.ServicerContext):
        self.context = context
        self.waiting = False
        self.since = time.monotonic()

    def waits(self) -> None:
        self.waiting, self.since = True, time.monotonic()

    def works(self) -> None:
        self.waiting, self.since = False, time.monotonic()


# --- admission --------------------------------------------------------------------------------------
class Admission(CallInterceptor):
    """Which service calls get in. Until the server is `ready` (database prepared, first snapshot
    loaded) and once it drains, none: UNAVAILABLE, which clients retry. Then at most `calls`
    unary-response calls and `streams` streaming ones at once, and at most `per_caller_streams`
    open streams per caller (the `caller_key` metadata, else the peer address); more get
    RESOURCE_EXHAUSTED at once. `self_limited` methods (WatchOffers) are held to their service's
    own limit instead of `streams`. Being admitted holds no worker: only pricing work does
    (server.services.workers), so an idle stream costs a thread and nothing else."""

    def __init__(self, calls: int, streams: int, per_caller_streams: int, ready: threading.Event,
                 caller_key: str = "", self_limited: frozenset[str] = frozenset()):
        self.limits = {False: calls, True: streams}
        self.per_caller_streams = per_caller_streams
        self.ready = ready
        self.caller_key = caller_key
        self.self_limited = self_limited
        self._admitted = {False: 0, True: 0}
        self._self_limited = 0
        self._streams_of: Counter[str] = Counter()
        self._draining = False
        self._changed = threading.Condition()

    @property
    def in_progress(self) -> int:
        with self._changed:
            return sum(self._admitted.values()) + self._self_limited

    def _enter(self, context: grpc.ServicerContext, streaming: bool, self_limited: bool) -> str | None:
        """Admit the call; returns the caller whose streams it counts against (None: unary)."""
        caller = caller_of(context, self.caller_key) if streaming else None
        with self._changed:
            if self._draining:
                raise Unavailable("the server is shutting down: retry on another instance", reason="SHUTTING_DOWN")
            if not self.ready.is_set():
                raise Unavailable("the server is starting: retry shortly", reason="STARTING")
            if not self_limited and self._admitted[streaming] >= self.limits[streaming]:
                what = "streams" if streaming else "calls"
                raise ResourceExhausted(f"more than {self.limits[streaming]} {what} in progress: retry later",
                                        reason="TOO_MANY_STREAMS" if streaming else "TOO_MANY_CALLS")
            if caller is not None and self._streams_of[caller] >= self.per_caller_streams:
                raise ResourceExhausted(f"this caller has {self.per_caller_streams} streams open already: "
                                        "close one first", reason="TOO_MANY_CALLER_STREAMS")
            if self_limited:
                self._self_limited += 1
            else:
                self._admitted[streaming] += 1
            if caller is not None:
                self._streams_of[caller] += 1
        return caller

    def _leave(self, streaming: bool, self_limited: bool, caller: str | None) -> None:
        with self._changed:
            if self_limited:
                self._self_limited -= 1
            else:
                self._admitted[streaming] -= 1
            if caller is not None:
                self._streams_of[caller] -= 1
                if not self._streams_of[caller]:
                    del self._streams_of[caller]
            self._changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new service calls; wait up to `timeout` for the ones in progress. True if none is left."""
        with self._changed:
            self._draining = True
            return self._changed.wait_for(lambda: not any(self._admitted.values()) and not self._self_limited,
                                          timeout)

    def wrap(self, behavior, method, request_streaming, response_streaming):
        if is_probe(method):
            return None
        streaming = request_streaming or response_streaming
        self_limited = method in self.self_limited

        def before(request, context):
            return request, self._enter(context, streaming, self_limited)

        def after(caller, failed):
            self._leave(streaming, self_limited, caller)
        return around(response_streaming, before, after, behavior)


# --- the rate limit ---------------------------------------------------------------------------------
class RateLimit(CallInterceptor):
    """One token per call from the caller's bucket, and one per request message of a client
    stream (each customer of a bulk stream counts like a unary call); none left:
    RESOURCE_EXHAUSTED RATE_LIMITED, with the wait until the next token."""

    def __init__(self, buckets: TokenBuckets, caller_key: str = ""):
        self.buckets = buckets
        self.caller_key = caller_key

    def _take(self, context: grpc.ServicerContext) -> None:
        wait = self.buckets.take(caller_of(context, self.caller_key))
        if wait > 0:
            raise ResourceExhausted(f"rate limit exceeded for this caller: retry in {milliseconds(wait)} ms",
                                    reason="RATE_LIMITED", retry_after=wait)

    def wrap(self, behavior, method, request_streaming, response_streaming):
        if is_probe(method):
            return None

        def limited(requests: Iterator[Any], context) -> Iterator[Any]:
            for request in requests:
                self._take(context)
                yield request

        def call(request, context):
            if request_streaming:
                return behavior(limited(request, context), context)
            self._take(context)
            return behavior(request, context)
        return call
