"""Cross-cutting behaviour of every call, in one place: the request id (x-request-id metadata,
generated when absent, echoed back and put on every log line of the call), access logging,
and the mapping of exceptions to status codes (a generic INTERNAL for bugs)."""
from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any, Callable

import grpc

from ..errors import ServiceError

log = logging.getLogger("tradeup.access")
errors_log = logging.getLogger("tradeup.errors")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
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


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "x-request-id" and _VALID_ID.match(value):
            return value
    return uuid.uuid4().hex


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, on_call: Callable[[str, str, float], None] | None = None):
        install_request_id_records()
        self.on_call = on_call  # (method, status code name, seconds): for metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.stream_stream, method), handler.request_deserializer, handler.response_serializer)

    def _begin(self, context: grpc.ServicerContext) -> tuple[contextvars.Token, float]:
        request_id = _request_id(context)
        context.send_initial_metadata((("x-request-id", request_id),))
        return request_id_var.set(request_id), time.perf_counter()

    def _end(self, method: str, code: str, started: float, token: contextvars.Token, detail: str = "") -> None:
        elapsed = time.perf_counter() - started
        log.info("%s %s %.2fms%s", method, code, elapsed * 1e3, f" {detail}" if detail else "")
        if self.on_call:
            self.on_call(method, code, elapsed)
        try:
            request_id_var.reset(token)
        except ValueError:  # a stream closed from another context: nothing to restore
            pass

    def _abort(self, context: grpc.ServicerContext, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, ServiceError):
            code, message = exc.code, str(exc)
        else:
            errors_log.error("unhandled error", exc_info=exc)
            code, message = "INTERNAL", f"internal server error (request id {request_id_var.get()})"
        context.abort(grpc.StatusCode[code], message)

    def _unary(self, behavior, method: str):
        def wrapper(request: Any, context: grpc.ServicerContext):
            token, started = self._begin(context)
            code = "OK"
            try:
                return behavior(request, context)
            except Exception as exc:
                code = exc.code if isinstance(exc, ServiceError) else "INTERNAL"
                if not context.is_active() and not isinstance(exc, ServiceError):
                    code = "CANCELLED"
                    raise
                self._abort(context, exc)
            finally:
                self._end(method, code, started, token)
        return wrapper

    def _streaming(self, behavior, method: str):
        def wrapper(request: Any, context: grpc.ServicerContext):
            token, started = self._begin(context)
            code = "OK"
            sent = 0
            try:
                for response in behavior(request, context):
                    sent += 1
                    yield response
            except Exception as exc:
                code = exc.code if isinstance(exc, ServiceError) else "INTERNAL"
                if not context.is_active() and not isinstance(exc, ServiceError):
                    code = "CANCELLED"
                    raise
                self._abort(context, exc)
            finally:
                if code == "OK" and not context.is_active():
                    code = "CANCELLED"
                self._end(method, code, started, token, f"messages={sent}")
        return wrapper
