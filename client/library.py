"""OfferClient: a typed Python client of the Trade-Up Engine.

    with OfferClient("localhost:50051") as client:
        response = client.generate_offers(customer_id="C00001", max_offers=10)

Every call has a default deadline (overridable per call); UNAVAILABLE is retried with
backoff by gRPC itself (service config), never other codes, and a parameter change never. Every call
carries the caller's OpenTelemetry context (W3C `traceparent`), so the server's spans join the
caller's trace. Results are the generated protobuf messages (typed by their .pyi stubs). A failed
call raises grpc.RpcError; `error_details(err)` reads what the server says about it (its stable
reason, every wrong field, when to retry).
"""
from __future__ import annotations

import json
import threading
from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from grpc_status import rpc_status

from protos.tradeup.v1 import admin_pb2, admin_pb2_grpc, offers_pb2 as pb, offers_pb2_grpc, search_pb2, search_pb2_grpc

TIERS = {"refresh": pb.TIER_REFRESH, "upgrade": pb.TIER_UPGRADE, "max_upgrade": pb.TIER_MAX_UPGRADE}
# Up to 4 attempts over up to 0.1 + 0.2 + 0.4 s of backoff (each a random part of it): enough to
# reach another replica or a server finishing its start-up (about 0.3 s), short enough that a
# caller with a deadline of a second still hears UNAVAILABLE, not the deadline.
_RETRY = {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2}
RETRY_POLICY = {
    "methodConfig": [{
        "name": [{"service": "tradeup.v1.OfferService"}, {"service": "tradeup.v1.SearchService"},
                 {"service": "tradeup.v1.AdminService"}],
        "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE"]},
    }, {
        # A unary call ends CANCELLED from the server only when it reached a server in the instant
        # that server closed, drained (grpc/grpc#41785): it never ran, so it is tried elsewhere. (A
        # stream can be cancelled for idling; the caller's own cancel is never retried.)
        "name": [{"service": "tradeup.v1.OfferService", "method": "GenerateOffers"},
                 {"service": "tradeup.v1.OfferService", "method": "GetAmortizationTable"},
                 {"service": "tradeup.v1.SearchService", "method": "SearchInventory"},
                 {"service": "tradeup.v1.SearchService", "method": "InventoryFacets"},
                 {"service": "tradeup.v1.SearchService", "method": "SearchCustomers"},
                 {"service": "tradeup.v1.AdminService", "method": "GetConfig"},
                 {"service": "tradeup.v1.AdminService", "method": "GetConfigHistory"},
                 {"service": "tradeup.v1.AdminService", "method": "InvalidateCache"},
                 {"service": "tradeup.v1.AdminService", "method": "GetStatus"},
                 {"service": "grpc.health.v1.Health", "method": "Check"}],
        "retryPolicy": {**_RETRY, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
    }, {
        # A change of the parameters is not repeated behind the caller's back (the more specific
        # name wins over the service's): the caller decides after reading the error.
        "name": [{"service": "tradeup.v1.AdminService", "method": "UpdateBusinessParameters"}],
    }],
}


def offer_request(cls, customer_id: str | None = None, profile: dict | pb.CustomerProfile | None = None,
                  overrides: dict | None = None, terms: Sequence[int] = (), tiers: Sequence[str | int] = (),
                  max_offers: int = 0, same_region: bool = False, max_cars: int = 0,
                  filters: dict | pb.ConsiderationFilters | None = None):
    """A GenerateOffers / StreamOffers / bulk / watch request from plain values. `filters`: the
    ConsiderationFilters fields, e.g. {"brands": ["Mazda"], "year_min": 2021, "price_max": 450000}."""
    request = cls(overrides=pb.PricingOverrides(**overrides) if overrides else None,
                  options=pb.OfferOptions(terms=list(terms), tiers=[TIERS.get(t, t) for t in tiers],
                                          max_offers=max_offers, same_region=same_region, max_cars=max_cars),
                  filters=_filters(filters))
    _set_customer(request, customer_id, profile)
    return request


def _filters(filters: dict | pb.ConsiderationFilters | None) -> pb.ConsiderationFilters | None:
    """The filters message, left unset when there are none (the server then skips them at once)."""
    if isinstance(filters, pb.ConsiderationFilters) or not filters:
        return filters or None
    return pb.ConsiderationFilters(**filters)


def _set_customer(request, customer_id, profile) -> None:
    if (customer_id is None) == (profile is None):
        raise ValueError("give exactly one of customer_id and profile")
    if customer_id is not None:
        request.customer_id = customer_id
    else:
        request.profile.CopyFrom(profile if isinstance(profile, pb.CustomerProfile) else pb.CustomerProfile(**profile))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _CallDetails(namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                                "compression")), grpc.ClientCallDetails):
    pass


class TraceContext(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Sends the caller's current OpenTelemetry context with every call, as the propagators of
    OTEL_PROPAGATORS write it (W3C `traceparent` and baggage by default); nothing when there is
    none. Propagation only, no client span: opentelemetry-instrumentation-grpc's client
    interceptor turns a stream's call into a plain generator (no cancel(), no metadata), and a
    caller that instruments its channels with it gets its client span all the same (its
    interceptor, nearer the channel, replaces the `traceparent` written here by its span's)."""

    def intercept_unary_unary(self, continuation, details, request):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            metadata = [(key, value) for key, value in details.metadata or () if key not in carrier]
            details = _CallDetails(details.method, details.timeout, [*metadata, *carrier.items()],
                                   details.credentials, details.wait_for_ready, details.compression)
        return continuation(details, request)

    intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = intercept_unary_unary


class OfferClient:
    def __init__(self, target: str = "localhost:50051", timeout: float = 10.0, admin_token: str | None = None,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, tls: bool = False, options: Sequence = ()):
        """`tls` (or any certificate given) opens a secure channel; `private_key` and
        `certificate_chain` add a client certificate for mutual TLS."""
        channel_options = [("grpc.service_config", json.dumps(RETRY_POLICY)), ("grpc.enable_retries", 1),
                           ("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        if tls or root_certificates or private_key:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            channel = grpc.insecure_channel(target, options=channel_options)
        self.channel = grpc.intercept_channel(channel, TraceContext())
        self.timeout = timeout
        self.admin_token = admin_token
        self.offers = offers_pb2_grpc.OfferServiceStub(self.channel)
        self.search = search_pb2_grpc.SearchServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> "OfferClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # --- offers ---------------------------------------------------------------------------------
    def generate_offers(self, *, timeout: float | None = None, metadata=None, **request) -> pb.GenerateOffersResponse:
        return self.offers.GenerateOffers(offer_request(pb.GenerateOffersRequest, **request),
                                          timeout=self._timeout(timeout), metadata=metadata)

    def stream_offers(self, *, timeout: float | None = None, metadata=None, **request) -> Iterator[pb.StreamOffersResponse]:
        return self.offers.StreamOffers(offer_request(pb.StreamOffersRequest, **request),
                                        timeout=self._timeout(timeout), metadata=metadata)

    def generate_offers_bulk(self, requests: Iterable[dict], *, timeout: float | None = None,
                             metadata=None) -> Iterator[pb.GenerateOffersBulkResponse]:
        """`requests`: dicts of offer_request keywords, e.g. {"customer_id": "C00001"}."""
        return self.offers.GenerateOffersBulk((offer_request(pb.GenerateOffersBulkRequest, **r) for r in requests),
                                              timeout=self._timeout(timeout), metadata=metadata)

    def find_minimum_subsidy(self, customer_id: str | None = None, profile=None, car_ids: Sequence[str] = (),
                             overrides: dict | None = None, same_region: bool = False, max_cars: int = 0,
                             filters: dict | pb.ConsiderationFilters | None = None, grid: dict | None = None,
                             max_viable: int = 0, timeout: float | None = None,
                             metadata=None) -> Iterator[pb.FindMinimumSubsidyResponse]:
        """`grid`: SubsidySearchGrid fields (e.g. {"cac_max": 20000, "cac_step": 1000}) replacing the
        configured grid for this call; `max_viable`: stop after that many viable cars."""
        request = pb.FindMinimumSubsidyRequest(car_ids=list(car_ids), overrides=pb.PricingOverrides(**(overrides or {})),
                                               same_region=same_region, max_cars=max_cars, filters=_filters(filters),
                                               max_viable=max_viable)
        if grid:
            request.grid.CopyFrom(pb.SubsidySearchGrid(**grid))
        _set_customer(request, customer_id, profile)
        return self.offers.FindMinimumSubsidy(request, timeout=self._timeout(timeout), metadata=metadata)

    def amortization(self, car_id: str, term: int, customer_id: str | None = None, profile=None,
                     overrides: dict | None = None, timeout: float | None = None,
                     metadata=None) -> pb.GetAmortizationTableResponse:
        request = pb.GetAmortizationTableRequest(car_id=car_id, term=term,
                                                 overrides=pb.PricingOverrides(**(overrides or {})))
        _set_customer(request, customer_id, profile)
        return self.offers.GetAmortizationTable(request, timeout=self._timeout(timeout), metadata=metadata)

    def watch_offers(self, *, timeout: float | None = None, metadata=None, **request) -> Iterator[pb.WatchOffersResponse]:
        """Live offers: the full answer, then one message per change to it (see LiveOffers).
        No deadline unless `timeout` is given; `.cancel()` on the result ends the stream."""
        return self.offers.WatchOffers(offer_request(pb.WatchOffersRequest, **request), timeout=timeout,
                                       metadata=metadata)

    # --- search ---------------------------------------------------------------------------------
    def search_inventory(self, query: str = "", filters: dict | pb.ConsiderationFilters | None = None, order_by: str = "", page_size: int = 0,
                         page_token: str = "", timeout: float | None = None,
                         metadata=None) -> search_pb2.SearchInventoryResponse:
        """One page of available cars; `filters`: ConsiderationFilters fields, e.g. {"brands": ["Mazda"]}."""
        request = search_pb2.SearchInventoryRequest(query=query, filters=_filters(filters),
                                                    order_by=order_by, page_size=page_size, page_token=page_token)
        return self.search.SearchInventory(request, timeout=self._timeout(timeout), metadata=metadata)

    def inventory_facets(self, query: str = "", filters: dict | pb.ConsiderationFilters | None = None, timeout: float | None = None,
                         metadata=None) -> search_pb2.InventoryFacetsResponse:
        request = search_pb2.InventoryFacetsRequest(query=query, filters=_filters(filters))
        return self.search.InventoryFacets(request, timeout=self._timeout(timeout), metadata=metadata)

    def search_customers(self, id_prefix: str = "", text: str = "", region: str = "", risk_profile: str = "",
                         order_by: str = "", page_size: int = 0, page_token: str = "", timeout: float | None = None,
                         metadata=None) -> search_pb2.SearchCustomersResponse:
        request = search_pb2.SearchCustomersRequest(id_prefix=id_prefix, text=text, region=region,
                                                    risk_profile=risk_profile, order_by=order_by,
                                                    page_size=page_size, page_token=page_token)
        return self.search.SearchCustomers(request, timeout=self._timeout(timeout), metadata=metadata)

    # --- health ---------------------------------------------------------------------------------
    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN."""
        response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout(timeout))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def watch_health(self, service: str = "", seconds: float | None = None,
                     timeout: float | None = None) -> Iterator[str]:
        """Each status change; for `seconds` (see for_seconds), else until the stream ends."""
        call = self.health_stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        for response in for_seconds(call, seconds):
            yield health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # --- admin ----------------------------------------------------------------------------------
    def _admin_metadata(self) -> tuple:
        return (("authorization", f"Bearer {self.admin_token}"),) if self.admin_token else ()

    def get_config(self, timeout: float | None = None) -> dict[str, Any]:
        """The effective configuration, secrets redacted. A Struct carries every number as a
        double: whole numbers come back as int (`"port": 50051`, not 50051.0)."""
        response = self.admin.GetConfig(admin_pb2.GetConfigRequest(), timeout=self._timeout(timeout),
                                        metadata=self._admin_metadata())
        return _whole_numbers(json_format.MessageToDict(response.config))

    def config_sources(self, timeout: float | None = None) -> tuple[dict[str, str], int]:
        """(key path -> "database", "file", "environment" or "default"; the configuration version)."""
        response = self.admin.GetConfig(admin_pb2.GetConfigRequest(), timeout=self._timeout(timeout),
                                        metadata=self._admin_metadata())
        return dict(response.sources), response.config_version

    def update_business_parameters(self, changes: dict[str, Any], timeout: float | None = None,
                                   changed_by: str = "") -> dict[str, Any]:
        """Store the changes for every process; `changed_by` goes into the history."""
        struct = struct_pb2.Struct()
        struct.update(changes)
        response = self.admin.UpdateBusinessParameters(
            admin_pb2.UpdateBusinessParametersRequest(changes=struct, changed_by=changed_by),
            timeout=self._timeout(timeout), metadata=self._admin_metadata())
        return json_format.MessageToDict(response.business)

    def config_history(self, key_prefix: str = "", limit: int = 0,
                       timeout: float | None = None) -> admin_pb2.GetConfigHistoryResponse:
        """Configuration changes, newest first (limit 0: the server's default of 100)."""
        return self.admin.GetConfigHistory(admin_pb2.GetConfigHistoryRequest(key_prefix=key_prefix, limit=limit),
                                           timeout=self._timeout(timeout), metadata=self._admin_metadata())

    def invalidate_cache(self, timeout: float | None = None) -> int:
        return self.admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(), timeout=self._timeout(timeout),
                                          metadata=self._admin_metadata()).entries_removed

    def status(self, timeout: float | None = None) -> admin_pb2.GetStatusResponse:
        return self.admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=self._timeout(timeout),
                                    metadata=self._admin_metadata())


def for_seconds(call, seconds: float | None) -> Iterator:
    """The messages of a streaming call until it ends or `seconds` pass (None: until it ends).
    Time is up by cancelling the call, a normal end on both sides, where a deadline would end in
    DEADLINE_EXCEEDED (an error for the caller and in the server's metrics)."""
    if seconds is None:
        yield from call
        return
    elapsed = threading.Event()

    def stop() -> None:
        elapsed.set()
        call.cancel()

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        yield from call
    except grpc.RpcError as err:
        if not (elapsed.is_set() and err.code() == grpc.StatusCode.CANCELLED):
            raise
    finally:
        timer.cancel()


@dataclass(frozen=True)
class ErrorDetails:
    """The google.rpc details of a failed call. `reason` (ErrorInfo) is stable, e.g.
    CUSTOMER_NOT_FOUND or RATE_LIMITED (the list: protos/tradeup/v1/offers.proto); `violations`
    holds every wrong field of the request as (field, description), or of a stored record
    (FAILED_PRECONDITION); `resource` is the (type, name) a NOT_FOUND did not find;
    `retry_after` the seconds to wait before retrying, when the server knows."""
    reason: str = ""
    domain: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    violations: tuple[tuple[str, str], ...] = ()
    resource: tuple[str, str] | None = None
    retry_after: float | None = None


_DETAIL_TYPES = (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.PreconditionFailure,
                 error_details_pb2.ResourceInfo, error_details_pb2.RetryInfo)


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """What the server said about a failed call (empty when it sent no details: a call that never
    reached it, or ended by gRPC itself such as a deadline the client set)."""
    status = rpc_status.from_call(error)
    if status is None:
        return ErrorDetails()
    found = {}
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                found[kind] = kind()
                packed.Unpack(found[kind])
    info = found.get(error_details_pb2.ErrorInfo, error_details_pb2.ErrorInfo())
    bad = found.get(error_details_pb2.BadRequest, error_details_pb2.BadRequest())
    unmet = found.get(error_details_pb2.PreconditionFailure, error_details_pb2.PreconditionFailure())
    resource = found.get(error_details_pb2.ResourceInfo)
    retry = found.get(error_details_pb2.RetryInfo)
    return ErrorDetails(
        reason=info.reason, domain=info.domain, metadata=tuple(sorted(info.metadata.items())),
        violations=(*((v.field, v.description) for v in bad.field_violations),
                    *((v.subject, v.description) for v in unmet.violations)),
        resource=(resource.resource_type, resource.resource_name) if resource else None,
        retry_after=retry.retry_delay.ToMilliseconds() / 1000 if retry else None)


def offer_order(offer: pb.Offer) -> tuple:
    """GenerateOffers' order (SPEC §3): tier, npv descending, payment ascending, car_id, term."""
    return (offer.tier, -offer.npv, offer.monthly_payment, offer.car_id, offer.term)


class LiveOffers:
    """A customer's current offers, kept by applying the messages of a WatchOffers stream.

        live = LiveOffers()
        for message in client.watch_offers(customer_id="C00042"):
            live.apply(message)
            print(live.summary.total_offers, [o.car_id for o in live.offers()])
    """

    def __init__(self):
        self.by_key: dict[tuple[str, int], pb.Offer] = {}
        self.summary = pb.OfferSummary()

    def apply(self, message: pb.WatchOffersResponse) -> None:
        if message.HasField("answer"):  # INITIAL, RESYNC: replaces everything
            self.by_key = {(o.car_id, o.term): o for g in message.answer.groups for o in g.offers}
        for key in message.removed:
            self.by_key.pop((key.car_id, key.term), None)
        for offer in (*message.changed, *message.added):
            self.by_key[(offer.car_id, offer.term)] = offer
        if message.HasField("summary"):
            self.summary = message.summary

    def offers(self) -> list[pb.Offer]:
        """Best first, as GenerateOffers returns them."""
        return sorted(self.by_key.values(), key=offer_order)
