"""Cross-cutting behaviour of every call, in one place: the request id (x-request-id metadata,
generated when absent, echoed back and put on every log line of the call), access logging,
and the mapping of exceptions to status codes (a generic INTERNAL for bugs)."""
from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
import uuid
from typing import Any

import grpc

from ..errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable
from ..logs import customer_field
from ..services.ratelimit import TokenBuckets

log = logging.getLogger("tradeup.access")
errors_log = logging.getLogger("tradeup.errors")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_call_details: contextvars.ContextVar[dict | None] = contextvars.ContextVar("call_details", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def install_request_id_records() -> None:
    """Give every log record a `request_id`: the id of the call being served ("-" outside calls)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "adds_request_id", False):
        return

    def with_request_id(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = request_id_var.get()
        return record

    with_request_id.adds_request_id = True
    logging.setLogRecordFactory(with_request_id)


def note_call(**details) -> None:
    """Add details (customer, offers) to the access-log line of the call being served."""
    current = _call_details.get()
    if current is not None:
        current.update(details)


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "x-request-id" and _VALID_ID.match(value):
            return value
    return uuid.uuid4().hex


# Probes and tooling are never rate limited and never wait for a worker.
UNLIMITED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_FOREVER = 1e6  # seconds: grpc reports a call without a deadline as one far in the future


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, metrics=None, log_customer_ids: bool = False, rate_limiter: TokenBuckets | None = None,
                 rate_limit_key: str = "", log_hash_key: str = ""):
        """`metrics`: server.metrics.Metrics (call_started / message_received / call_finished), or None.
        `rate_limiter`: per-caller buckets; the caller is the `rate_limit_key` metadata, else the peer.
        Customer ids are logged raw, as their HMAC under `log_hash_key`, or not at all (no key)."""
        install_request_id_records()
        self.metrics = metrics
        self.log_customer_ids = log_customer_ids
        self.log_hash_key = log_hash_key
        self.rate_limiter = rate_limiter
        self.rate_limit_key = rate_limit_key

    def _check_rate(self, method: str, context: grpc.ServicerContext) -> None:
        if self.rate_limiter is None or method.startswith(UNLIMITED_PREFIXES):
            return
        caller = None
        if self.rate_limit_key:
            caller = next((v for k, v in context.invocation_metadata() if k == self.rate_limit_key), None)
        if caller is None:
            caller = context.peer().rsplit(":", 1)[0]  # the address, whatever the port
        wait = self.rate_limiter.take(caller)
        if wait > 0:
            retry_ms = max(1, int(wait * 1000 + 0.999))
            context.set_trailing_metadata((("retry-after-ms", str(retry_ms)),))
            raise ResourceExhausted(f"rate limit exceeded for this caller: retry in {retry_ms} ms")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, "unary"), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, "server_stream"), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, "client_stream"), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method, "bidi_stream"), handler.request_deserializer,
            handler.response_serializer)

    def _begin(self, method: str, grpc_type: str, context: grpc.ServicerContext) -> tuple[tuple, float]:
        request_id = _request_id(context)
        context.send_initial_metadata((("x-request-id", request_id),))
        if self.metrics:
            self.metrics.call_started(method, grpc_type)
        return (request_id_var.set(request_id), _call_details.set({})), time.perf_counter()

    def _counted(self, requests, method: str, grpc_type: str):
        """The request stream of a client- or bidi-streaming call, counted for the metrics."""
        if not self.metrics or grpc_type in ("unary", "server_stream"):
            return requests

        def counted():
            for request in requests:
                self.metrics.message_received(method, grpc_type)
                yield request
        return counted()

    def _end(self, method: str, grpc_type: str, code: str, started: float, tokens: tuple,
             messages: int | None = None) -> None:
        elapsed = time.perf_counter() - started
        details = dict(_call_details.get() or {})
        if "customer" in details:
            shown = customer_field(details.pop("customer"), self.log_hash_key, self.log_customer_ids)
            if shown is not None:
                details["customer"] = shown
        if messages is not None:
            details["messages"] = messages
        log.info("%s %s %.2fms", method, code, elapsed * 1e3,
                 extra={"method": method, "code": code, "duration_ms": round(elapsed * 1e3, 3), **details})
        if self.metrics:
            self.metrics.call_finished(method, grpc_type, code, elapsed, messages)
        for var, token in zip((request_id_var, _call_details), tokens):
            try:
                var.reset(token)
            except ValueError:  # a stream closed from another context: nothing to restore
                pass

    @staticmethod
    def _code_of(exc: Exception, context: grpc.ServicerContext) -> str:
        if isinstance(exc, ServiceError):
            return exc.code
        return "INTERNAL" if context.is_active() else "CANCELLED"

    @staticmethod
    def _fail(context: grpc.ServicerContext, exc: Exception, code: str) -> None:
        """End the call with `code`: a domain error's own message, a generic one for bugs (logged
        with the traceback); a call the client already left is not answered."""
        if code == "CANCELLED":
            raise exc
        if isinstance(exc, ServiceError):
            context.abort(grpc.StatusCode[code], str(exc))
        errors_log.error("unhandled error", exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal server error (request id {request_id_var.get()})")

    def _unary(self, behavior, method: str, grpc_type: str):
        def wrapper(request: Any, context: grpc.ServicerContext):
            tokens, started = self._begin(method, grpc_type, context)
            code = "OK"
            try:
                self._check_rate(method, context)
                return behavior(self._counted(request, method, grpc_type), context)
            except Exception as exc:
                code = self._code_of(exc, context)
                self._fail(context, exc, code)
            finally:
                self._end(method, grpc_type, code, started, tokens)
        return wrapper

    def _streaming(self, behavior, method: str, grpc_type: str):
        def wrapper(request: Any, context: grpc.ServicerContext):
            tokens, started = self._begin(method, grpc_type, context)
            code = "OK"
            sent = 0
            try:
                self._check_rate(method, context)
                for response in behavior(self._counted(request, method, grpc_type), context):
                    sent += 1
                    yield response
            except Exception as exc:
                code = self._code_of(exc, context)
                self._fail(context, exc, code)
            finally:
                if code == "OK" and not context.is_active():
                    code = "CANCELLED"
                self._end(method, grpc_type, code, started, tokens, sent)
        return wrapper


class Admission(grpc.ServerInterceptor):
    """Service calls take one of `workers` places for the whole call, waiting for one no longer
    than their deadline; at most `admitted` calls are in (working or waiting), the others get
    RESOURCE_EXHAUSTED at once. Health and reflection never take a place, so they answer while
    every worker is busy. Once draining, new service calls end UNAVAILABLE (clients retry on
    another replica) while the calls in progress finish. `self_limited` methods (long-lived,
    mostly idle streams such as WatchOffers) are admitted by their own service's limit instead."""

    def __init__(self, workers: int, admitted: int, self_limited: frozenset[str], ready: threading.Event):
        self._workers = threading.BoundedSemaphore(workers)
        self._ready = ready  # until set (the database is prepared), service calls end UNAVAILABLE
        self._self_limited = self_limited
        self._admitted_max = admitted
        self._admitted = 0
        self._draining = False
        self._changed = threading.Condition()

    @property
    def in_progress(self) -> int:
        with self._changed:
            return self._admitted

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self._changed:
            if self._draining:
                raise Unavailable("the server is shutting down: retry on another instance")
            if not self._ready.is_set():
                raise Unavailable("the server is starting: retry shortly")
            if self._admitted >= self._admitted_max:
                raise ResourceExhausted(f"more than {self._admitted_max} calls in progress: retry later")
            self._admitted += 1
        left = context.time_remaining()
        if not self._workers.acquire(timeout=-1 if left is None or left > _FOREVER else left):
            self._leave(False)
            raise DeadlineExceeded("deadline exceeded waiting for a free worker")

    def _leave(self, working: bool = True) -> None:
        if working:
            self._workers.release()
        with self._changed:
            self._admitted -= 1
            self._changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new service calls; wait up to `timeout` for the ones in progress. True if none is left."""
        with self._changed:
            self._draining = True
            return self._changed.wait_for(lambda: self._admitted == 0, timeout)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNLIMITED_PREFIXES) or method in self._self_limited:
            return handler
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            def unary(request, context):
                self._enter(context)
                try:
                    return behavior(request, context)
                finally:
                    self._leave()
            wrapped = unary
        else:
            behavior = handler.unary_stream or handler.stream_stream

            def streaming(request, context):
                self._enter(context)
                try:
                    yield from behavior(request, context)
                finally:
                    self._leave()
            wrapped = streaming
        kind = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
                (True, True): "stream_stream"}[(handler.request_streaming, handler.response_streaming)]
        return getattr(grpc, f"{kind}_rpc_method_handler")(wrapped, handler.request_deserializer,
                                                          handler.response_serializer)
