"""Logging set-up: JSON lines (or text), every record with the request id of its call (and its
trace and span ids while tracing is on); and what the logs may show of a customer id."""
from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import sys
import time

from opentelemetry import trace

# The id of the call being served ("-" outside calls), on every log record.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Attributes every LogRecord has; anything else on a record was passed as `extra` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}
# Set while tracing is on (server.tracing): records then carry the trace and span ids of their call.
_trace_ids = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "request_id": getattr(record, "request_id", "-"),
                 "message": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def include_trace_ids(on: bool) -> None:
    """While on, a record logged within a traced call carries `trace_id` and `span_id`."""
    global _trace_ids
    _trace_ids = on


def install_request_id_records() -> None:
    """Give every log record a `request_id`: the id of the call being served ("-" outside calls);
    and while tracing is on, the trace and span ids of the span current where it is logged.
    Our record factory rather than opentelemetry-instrumentation-logging's: that one adds four
    otel* fields to every record, "0" outside spans (and attaches an OpenTelemetry log handler
    to the root logger unless told not to), and its uninstrument restores the factory it
    found, dropping any installed since."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "adds_request_id", False):
        return

    def with_request_id(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = request_id_var.get()
        if _trace_ids:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = format(span.trace_id, "032x")
                record.span_id = format(span.span_id, "016x")
        return record

    with_request_id.adds_request_id = True
    logging.setLogRecordFactory(with_request_id)


def configure_logging(level: str, fmt: str = "json") -> None:
    install_request_id_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def customer_field(customer_id: str, hash_key: str, raw: bool = False) -> str | None:
    """What a log line shows of a customer id: the id itself when `raw`; else its HMAC-SHA256
    under `hash_key` (16 hex digits), the same on every replica that shares the key, and not
    reversible by hashing the enumerable ids (C00001...) without it; with no key, nothing."""
    if raw:
        return customer_id
    if not hash_key:
        return None
    return hmac.new(hash_key.encode(), customer_id.encode(), hashlib.sha256).hexdigest()[:16]
