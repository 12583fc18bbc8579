"""OpenTelemetry traces: off unless the standard OTEL_* variables ask for them.

On when OTEL_TRACES_EXPORTER is `otlp`, or is unset while OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; off when OTEL_SDK_DISABLED is true or the exporter is
`none`. The SDK reads the rest itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout, TLS), OTEL_BSP_*
and OTEL_PROPAGATORS (W3C tracecontext and baggage by default).

Traces start at calls: the server span of each call (server.rpc.interceptors.CallTracing), then
the spans of its layers (`traced`) and those of the instrumented drivers, one per SQL statement
(PyMySQL, sqlite3) and per Redis command. Work outside calls (change-feed polls, reconciliation,
the watch's re-pricing, health checks) records nothing: it would bury the calls in traces of its own.

Off, the server has no tracing interceptor and no instrumented driver, and a `traced` function
costs one check.
"""
from __future__ import annotations

import functools
import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from . import logs
from .errors import ConfigError

SERVICE = "tradeup-engine"
log = logging.getLogger("tradeup.server")
# The tracer of this process while tracing is on (Tracing.start), else None.
_tracer: trace.Tracer | None = None


def traced(name: str):
    """Decorator: a span `name` around each call of the function while tracing is on, within a
    recorded span (a call the sampler left out records none: the SDK's decision to drop a span
    costs more than some of the layers it would time)."""
    def decorate(function):
        @functools.wraps(function)
        def call(*args, **kwargs):
            if _tracer is None or not trace.get_current_span().is_recording():
                return function(*args, **kwargs)
            with _tracer.start_as_current_span(name):
                return function(*args, **kwargs)
        return call
    return decorate


def requested() -> bool:
    """Whether the OTEL_* variables ask for traces; ConfigError when they ask for an exporter or
    protocol this service does not ship (it exports over OTLP/gRPC)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if exporters - {"otlp", "none"}:
        raise ConfigError("OTEL_TRACES_EXPORTER", f"must be otlp or none, got {env['OTEL_TRACES_EXPORTER']!r}")
    if exporters:
        on = "otlp" in exporters
    else:
        on = bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    protocol = next((name for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
                     if env.get(name)), None)
    if on and protocol and env[protocol] != "grpc":
        raise ConfigError(protocol, f"must be grpc, got {env[protocol]!r}")
    return on


class CallsOnly(Sampler):
    """The configured sampler, within calls: a span with no parent that is not a call's server
    span (the work of a background thread) is dropped."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        if kind is not trace.SpanKind.SERVER and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self.sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"CallsOnly{{{self.sampler.get_description()}}}"


def tracer_provider(*processors: SpanProcessor) -> TracerProvider:
    """A tracer provider as the OTEL_* variables configure it (resource, sampler), held to calls
    (CallsOnly), handing its spans to `processors`. Tracing.close shuts it down, not the exit."""
    resource = Resource.create()
    if resource.attributes[SERVICE_NAME].startswith("unknown_service"):  # the variables name no service
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.sampler = CallsOnly(provider.sampler)  # the SDK's reading of OTEL_TRACES_SAMPLER; before any tracer
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


class Tracing:
    """The traces of one server process (made in the process that serves: after a fork)."""

    def __init__(self, provider: TracerProvider):
        self.provider = provider
        self.tracer = provider.get_tracer(SERVICE)
        self._instrumentors: list = []

    @classmethod
    def from_environment(cls) -> Tracing | None:
        """Tracing as the OTEL_* variables ask (None: off), exporting in batches over OTLP/gRPC."""
        if not requested():
            return None
        # Imported only when tracing is on: the exporter brings the OTLP stubs.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        tracing = cls(tracer_provider(BatchSpanProcessor(OTLPSpanExporter())))
        log.info("tracing on: spans exported over OTLP/gRPC",
                 extra={"service_name": tracing.provider.resource.attributes[SERVICE_NAME],
                        "sampler": tracing.provider.sampler.get_description()})
        return tracing

    def start(self, redis_client=None) -> None:
        """Trace the functions marked `traced`, every SQL statement on the connections opened
        from now on (PyMySQL, sqlite3) and every command of `redis_client`; log records of a
        traced call carry its trace and span ids."""
        global _tracer
        from opentelemetry.instrumentation.pymysql import PyMySQLInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
        self._instrumentors = [PyMySQLInstrumentor(), SQLite3Instrumentor()]
        for instrumentor in self._instrumentors:
            instrumentor.instrument(tracer_provider=self.provider)
        if redis_client is not None:
            RedisInstrumentor.instrument_client(redis_client, tracer_provider=self.provider)
        _tracer = self.tracer
        logs.include_trace_ids(True)

    def close(self, timeout: float) -> None:
        """Stop tracing and export the spans left, waiting at most `timeout` seconds for the
        collector (one that does not answer is left to the exporter's daemon thread)."""
        global _tracer
        _tracer = None
        logs.include_trace_ids(False)
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        exporting = threading.Thread(target=self.provider.shutdown, name="trace-export", daemon=True)
        exporting.start()
        exporting.join(timeout)
