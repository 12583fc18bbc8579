"""Thin servicers: convert the request, call the service, convert the result back.

Errors are raised as server.errors and mapped to status codes by the interceptor.
"""
from __future__ import annotations

from typing import Iterator

from protos.tradeup.v1 import admin_pb2, admin_pb2_grpc, offers_pb2 as pb, offers_pb2_grpc, search_pb2_grpc

from ..deadline import Deadline
from ..errors import InvalidArgument, ServiceError
from ..services.admin import AdminService
from ..services.offers import OfferService
from ..services.search import SearchService
from ..services.watch import Stream, WatchService
from . import converters
from .interceptors import note_call


# Methods whose servicer returns pre-encoded response bytes (see converters.generate_response).
PRE_ENCODED = frozenset({"GenerateOffers", "StreamOffers", "GenerateOffersBulk", "WatchOffers"})
# Methods that hold no server thread: gRPC calls them once, as behavior(request, context, send),
# on their service's `open_pool` (see server.rpc.interceptors._Pump).
NON_BLOCKING = frozenset({"WatchOffers"})


class OfferServicer(offers_pb2_grpc.OfferServiceServicer):
    """`default_deadline`: seconds, the deadline of a call that has none (of each customer of a
    bulk stream that has none)."""

    def __init__(self, service: OfferService, batch_size: int, max_bulk: int, watch: WatchService,
                 default_deadline: float):
        self.service = service
        self.watch = watch
        self.batch_size = batch_size
        self.max_bulk = max_bulk
        self.default_deadline = default_deadline

    def _deadline(self, context) -> Deadline:
        return Deadline.of_call(context, self.default_deadline)

    def GenerateOffers(self, request: pb.GenerateOffersRequest, context) -> bytes:
        result = self.service.generate(converters.offer_query(request), self._deadline(context))
        note_call(customer=result.customer.customer_id, offers=result.returned)
        return converters.generate_response(result)

    def StreamOffers(self, request: pb.StreamOffersRequest, context) -> Iterator[bytes]:
        result = self.service.generate(converters.offer_query(request), self._deadline(context))
        note_call(customer=result.customer.customer_id, offers=result.returned)
        # Batches, not one message per offer: Python gRPC pays a real cost per streamed message.
        for first in range(0, max(result.returned, 1), self.batch_size):
            last = min(first + self.batch_size, result.returned)
            yield converters.stream_batch(result, first, last, with_summary=last == result.returned)

    def GenerateOffersBulk(self, requests, context) -> Iterator[bytes]:
        offers = 0
        for index, request in enumerate(requests):
            if index >= self.max_bulk:
                raise InvalidArgument(f"at most {self.max_bulk} customers per stream", "requests",
                                      reason="TOO_MANY_CUSTOMERS")
            customer_id = request.customer_id if request.WhichOneof("customer") == "customer_id" \
                else request.profile.customer_id
            try:  # each customer has the call's deadline, or a default of its own
                result = self.service.generate(converters.offer_query(request), self._deadline(context))
            except ServiceError as exc:
                if exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise  # the whole call is affected, not this customer
                response = converters.bulk_error(index, customer_id, exc)
            else:
                offers += result.returned
                response = converters.bulk_offers(index, customer_id, result)
            note_call(customers=index + 1, offers=offers)
            yield response

    def FindMinimumSubsidy(self, request: pb.FindMinimumSubsidyRequest, context):
        for customer, results, totals in self.service.find_minimum_subsidy(
                converters.subsidy_query(request), self._deadline(context), self.batch_size, context.is_active):
            note_call(customer=customer.customer_id, cars=totals.candidates)
            response = pb.FindMinimumSubsidyResponse(results=converters.subsidy_to_pb(results))
            if totals.done:
                response.viable_count, response.cars_searched = totals.viable, totals.searched
                response.summary.CopyFrom(converters.subsidy_summary(totals))
            yield response

    def GetAmortizationTable(self, request: pb.GetAmortizationTableRequest, context):
        query = converters.customer_query(request)
        offers, rows = self.service.amortization(query, request.car_id, request.term, self._deadline(context))
        note_call(customer=query.customer.customer_id or query.customer.profile.customer_id)
        return converters.amortization_response(offers, rows)

    def WatchOffers(self, request: pb.WatchOffersRequest, context, send) -> None:
        """Non-blocking (NON_BLOCKING): called once, on the watch service's open threads; sends the
        INITIAL answer before it returns, and the watch service's sender threads send the rest and
        end the call."""
        stream = Stream(send=lambda update: send(converters.watch_response(update)), end=send, cancel=context.cancel)
        watcher = self.watch.open(converters.offer_query(request), self._deadline(context),
                                  Deadline.of_stream(context), stream)
        note_call(customer=watcher.group.customer.customer_id)
        if not context.add_callback(watcher.cancel):  # the client left already
            watcher.cancel()


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, service: SearchService, default_deadline: float):
        self.service = service
        self.default_deadline = default_deadline  # seconds, for a call that has none

    def _deadline(self, context) -> Deadline:
        return Deadline.of_call(context, self.default_deadline)

    def SearchInventory(self, request, context):
        page = self.service.search_inventory(converters.inventory_query(request), self._deadline(context))
        note_call(cars=len(page.cars))
        return converters.car_page_to_pb(page)

    def InventoryFacets(self, request, context):
        facets = self.service.facets(*converters.facets_query(request), self._deadline(context))
        note_call(cars=facets.total_cars)
        return converters.facets_to_pb(facets)

    def SearchCustomers(self, request, context):
        customers, token = self.service.search_customers(converters.customer_search_query(request), self._deadline(context))
        note_call(customers=len(customers))
        return converters.customers_to_pb(customers, token)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, service: AdminService, default_deadline: float):
        self.service = service
        self.default_deadline = default_deadline  # seconds, for a call that has none

    def _authorize(self, context) -> None:
        metadata = dict(context.invocation_metadata())
        self.service.authorize(metadata.get("authorization"))

    def GetConfig(self, request, context):
        self._authorize(context)
        config, sources, version = self.service.config()
        return admin_pb2.GetConfigResponse(config=converters.to_struct(config), sources=sources,
                                           config_version=version)

    def UpdateBusinessParameters(self, request, context):
        self._authorize(context)
        changed_by = request.changed_by or dict(context.invocation_metadata()).get("x-caller-id") or context.peer()
        business, version = self.service.update_business(converters.from_struct(request.changes), changed_by,
                                                         Deadline.of_call(context, self.default_deadline))
        return admin_pb2.UpdateBusinessParametersResponse(business=converters.to_struct(business),
                                                          config_version=version)

    def GetConfigHistory(self, request, context):
        self._authorize(context)
        return converters.history_to_pb(self.service.history(request.key_prefix, request.limit,
                                                             Deadline.of_call(context, self.default_deadline)))

    def InvalidateCache(self, request, context):
        self._authorize(context)
        removed, version = self.service.invalidate_caches(Deadline.of_call(context, self.default_deadline))
        return admin_pb2.InvalidateCacheResponse(entries_removed=removed, inventory_version=version)

    def GetStatus(self, request, context):
        self._authorize(context)
        return converters.status_to_pb(self.service.status())
