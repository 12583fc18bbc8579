"""Builds the gRPC server: services, health (grpc.health.v1), reflection, interceptors, limits."""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from protos.tradeup.v1 import admin_pb2, admin_pb2_grpc, offers_pb2, search_pb2, search_pb2_grpc

from ..config import Settings
from .interceptors import (METHOD_HANDLERS, AccessLog, Admission, CallMetrics, CallPipeline, CallTracing,
                           DefaultDeadline, ErrorMapping, RateLimit, RequestIds)
from .servicers import NON_BLOCKING, PRE_ENCODED, AdminServicer, OfferServicer, SearchServicer

log = logging.getLogger("tradeup.server")
OFFER_SERVICE = offers_pb2.DESCRIPTOR.services_by_name["OfferService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SEARCH_SERVICE = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _pass_through(encoded: bytes) -> bytes:
    return encoded


def non_blocking(behavior, pool: futures.ThreadPoolExecutor):
    """`behavior` marked for gRPC as non-blocking (called once, as behavior(request, context, send),
    holding no thread after it returns), run on `pool` rather than the server's threads."""
    def call(request, context, send):
        return behavior(request, context, send)
    call.experimental_non_blocking = True
    call.experimental_thread_pool = pool
    return call


def offer_service_handler(servicer: OfferServicer) -> grpc.GenericRpcHandler:
    """The generated registration of OfferService, except that the PRE_ENCODED methods hand
    their already-serialized response bytes to gRPC unchanged. Clients see ordinary messages."""
    service = offers_pb2.DESCRIPTOR.services_by_name["OfferService"]
    handlers = {}
    for method in service.methods:
        serializer = _pass_through if method.name in PRE_ENCODED else GetMessageClass(method.output_type).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.name in NON_BLOCKING:
            behavior = non_blocking(behavior, servicer.watch.open_pool)
        handlers[method.name] = METHOD_HANDLERS[(method.client_streaming, method.server_streaming)](
            behavior, request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=serializer)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


class MethodAwareReflectionServicer(reflection.ReflectionServicer):
    """Server reflection that also resolves `package.Service.Method` symbols (ghz and grpcurl ask
    for them; protobuf's upb descriptor pool only knows services) to the service's file."""

    def _file_containing_symbol(self, request, fully_qualified_name):
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            service_name, _, method = fully_qualified_name.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                return response
            if method in service.methods_by_name:
                return super()._file_containing_symbol(request, service_name)
        return response


PROBE_TIMEOUT = 0.5  # seconds


class HealthMonitor:
    """Keeps grpc.health.v1 in step with the process and the database. Liveness is not readiness:
    the overall service ("") is SERVING while the process runs and not shutting down;
    tradeup.v1.OfferService is SERVING while the database answers, from the first check that
    prepared it in full (`check_database` migrates, seeds and loads the inventory). `check` runs
    on a thread of its own every `interval` seconds, each ping bounded by PROBE_TIMEOUT (a healthy
    database answers in well under a millisecond; the preparation before the first success takes
    longer, bounded by the database's own timeouts), so it neither waits behind business calls
    nor for a stalled database: a stall shows within interval + PROBE_TIMEOUT."""

    def __init__(self, servicer: health.HealthServicer, check_database, interval: float):
        self.servicer = servicer
        self.check_database = check_database  # (timeout) -> None, raises when unreachable
        self.interval = interval
        self.reachable: bool | None = None  # unknown until the first check
        self.shutting_down = False
        self.first_check = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._publish()

    def start(self) -> None:
        self._thread.start()

    def check(self) -> bool:
        try:
            self.check_database(min(self.interval, PROBE_TIMEOUT))
            self.set_reachable(True)
        except Exception as exc:  # any failure to answer means not ready
            if self.shutting_down:  # the stop interrupted this check (a seed rolled back): nothing to report
                return False
            if self.reachable is not False:
                log.warning("database check failed: %s", exc)
            self.set_reachable(False)
        return self.reachable

    def set_reachable(self, reachable: bool) -> None:
        if reachable == self.reachable:
            return  # Watch streams hear changes only
        log.log(logging.INFO if reachable else logging.WARNING, "database %s",
                "reachable: serving" if reachable else "unreachable: not serving")
        self.reachable = reachable
        self._publish()

    def on_breaker(self, state: str) -> None:
        if state == "open":
            self.set_reachable(False)

    def _publish(self) -> None:
        alive = NOT_SERVING if self.shutting_down else SERVING
        self.servicer.set("", alive)
        self.servicer.set(ADMIN_SERVICE, alive)
        ready = SERVING if self.reachable and not self.shutting_down else NOT_SERVING
        self.servicer.set(OFFER_SERVICE, ready)
        self.servicer.set(SEARCH_SERVICE, ready)  # customers come from the database, cars from its snapshot

    def _run(self) -> None:
        next_check = time.monotonic()
        while True:
            self.check()
            self.first_check.set()
            next_check = max(next_check + self.interval, time.monotonic())
            if self._stop.wait(next_check - time.monotonic()):
                return

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        self._stop.set()
        self._publish()

    def join(self) -> None:
        """Wait for the check in progress, after begin_shutdown."""
        if self._thread.is_alive():
            self._thread.join()


# Threads beyond the admitted service calls: health and reflection always find one.
PROBE_THREADS = 4
WATCH_METHOD = "/tradeup.v1.OfferService/WatchOffers"


def rpc_threads(settings: Settings) -> int:
    """Threads the server needs: one per admitted call (unary or stream: see Admission; a stream
    blocked on its client holds its thread, nothing else) and PROBE_THREADS, so grpc does not
    queue a call behind busy threads (WatchOffers and health's Watch run on pools of their own
    and hold no thread; a reflection stream, held open for good, would take a probe thread). The
    pool starts them on demand."""
    s = settings.server
    return s.max_concurrent_rpcs + s.max_streams + PROBE_THREADS


def pending_calls(settings: Settings) -> int:
    """Calls grpc may hold until the server takes them: as many as it may admit."""
    s = settings.server
    return s.max_concurrent_rpcs + s.max_streams + s.max_watchers + PROBE_THREADS


class CallInterceptors:
    """The interceptors of every call, in the order they run (`chain`, outermost first): the
    trace, with a `tracer` only (tracing off, none: it costs nothing), spans all the others and
    everything they log; the request id is on every record the others log; the access log and
    metrics see the status the error mapping gives; admission (readiness, draining, limits) comes
    before the rate limit so a refused call spends no token."""

    def __init__(self, settings: Settings, metrics, ready: threading.Event, rate_limiter=None, tracer=None):
        s = settings.server
        self.admission = Admission(s.max_concurrent_rpcs, s.max_streams, s.max_streams_per_caller, ready,
                                   s.rate_limit_key, frozenset({WATCH_METHOD}))
        self.default_deadline = DefaultDeadline(s.default_deadline_seconds, frozenset({WATCH_METHOD}))
        access_log = AccessLog(s.log_customer_ids, s.log_hash_key, s.access_log_sample, s.slow_call_ms / 1e3)
        self.chain = [RequestIds(), access_log, CallMetrics(metrics), ErrorMapping(), self.admission,
                      self.default_deadline]
        if tracer is not None:
            self.chain.insert(0, CallTracing(tracer))
        if rate_limiter is not None:
            self.chain.append(RateLimit(rate_limiter, s.rate_limit_key))

    def close(self) -> None:
        self.default_deadline.close()


def create_server(settings: Settings, offer_servicer: OfferServicer, search_servicer: SearchServicer,
                  admin_servicer: AdminServicer,
                  health_servicer: health.HealthServicer, interceptors: list,
                  executor: futures.ThreadPoolExecutor, address: str | None = None) -> tuple[grpc.Server, int]:
    """A server ready to start, serving on `executor`'s threads (rpc_threads of them; the caller
    shuts it down after stopping the server: grpc does not), and the port it bound."""
    s = settings.server
    server = grpc.server(
        executor,
        interceptors=[CallPipeline(interceptors)],
        # No limit of grpc's own: it would refuse health checks too. Admission refuses service
        # calls beyond its limits at once, so PROBE_THREADS threads stay free for probes.
        options=[("grpc.max_receive_message_length", s.max_message_bytes),
                 ("grpc.max_send_message_length", s.max_message_bytes),
                 # Calls that arrive faster than the server takes them wait in grpc's queue: room
                 # for every call and watch a process admits (a fleet's clients reconnect at once).
                 ("grpc.server.max_pending_requests", pending_calls(settings)),
                 ("grpc.server.max_pending_requests_hard_limit", pending_calls(settings)),
                 # Several worker processes may share the port (server.processes).
                 ("grpc.so_reuseport", 1 if s.processes > 1 else 0)])
    server.add_generic_rpc_handlers((offer_service_handler(offer_servicer),))
    search_pb2_grpc.add_SearchServiceServicer_to_server(search_servicer, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(MethodAwareReflectionServicer(
        (OFFER_SERVICE, SEARCH_SERVICE, ADMIN_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME)), server)
    address = address or f"{s.host}:{s.port}"
    if s.tls_cert_file:
        client_ca = Path(s.tls_client_ca_file).read_bytes() if s.tls_client_ca_file else None
        credentials = grpc.ssl_server_credentials(
            [(Path(s.tls_key_file).read_bytes(), Path(s.tls_cert_file).read_bytes())],
            root_certificates=client_ca, require_client_auth=client_ca is not None)
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    return server, port
