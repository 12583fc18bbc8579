"""Every protobuf <-> domain conversion of the service, in one place."""
from __future__ import annotations

import math
from typing import Any, Sequence

from google.protobuf import struct_pb2

from engine_ext import Offer, OfferSet, ScheduleRow, SubsidyResult
from engine_ext.wire_py import field_header, length_delimited
from engine_ext.constants import ALL_TIERS, TIER_MAX_UPGRADE, TIER_NAMES, TIER_REFRESH, TIER_UPGRADE

from protos.tradeup.v1 import admin_pb2, offers_pb2 as pb, search_pb2

from ..data.filters import CUSTOMER_FILTERS, NO_FILTERS, ConsiderationFilters, names
from ..domain import ConfigChange, Customer
from ..errors import InvalidArgument, ServiceError, Violations, violation
from ..services.offers import (GRID_FIELDS, OVERRIDE_FIELDS, CustomerRef, OfferQuery, OfferResult, SubsidyQuery,
                               SubsidyTotals)
from ..services import watch
from ..services.search import MAX_QUERY_WORDS, MAX_TEXT, CarPage, CustomerQuery, Facets, InventoryQuery
from ..tracing import traced

MAX_TERMS_IN_REQUEST = 24
MAX_FILTER_NAMES = 50  # entries of each name list of ConsiderationFilters, each of at most MAX_NAME_LENGTH
MAX_NAME_LENGTH = 64
MAX_FILTER_AMOUNT = 1e10  # MXN, as the customer's amounts
MAX_FILTER_RATIO = 1e6
SUBSIDY_OUTCOMES = {
    None: pb.SUBSIDY_OUTCOME_VIABLE,
    "Payment_Delta_Too_High": pb.SUBSIDY_OUTCOME_PAYMENT_DELTA_TOO_HIGH,
    "NPV_Below_Minimum": pb.SUBSIDY_OUTCOME_NPV_BELOW_MINIMUM,
    "LTV_Too_High": pb.SUBSIDY_OUTCOME_LTV_TOO_HIGH,
    "Down_Payment_Not_Met": pb.SUBSIDY_OUTCOME_DOWN_PAYMENT_NOT_MET,
}
# Engine tier codes are the proto enum values.
assert (TIER_REFRESH, TIER_UPGRADE, TIER_MAX_UPGRADE) == (pb.TIER_REFRESH, pb.TIER_UPGRADE, pb.TIER_MAX_UPGRADE)
TIER_BY_NAME = {name: code for code, name in TIER_NAMES.items()}


# --- requests -> domain --------------------------------------------------------------------------
# Each check notes what it finds in the request's Violations and goes on, so one error names every
# wrong field; without a collector it raises at the first.
def _text(value: str, name: str, limit: int, violations: Violations | None = None) -> str:
    if len(value) > limit or not value.isprintable():
        violation(violations, name, f"must be at most {limit} printable characters")
    return value


def customer_ref(request: Any, violations: Violations | None = None) -> CustomerRef:
    which = request.WhichOneof("customer")
    if which == "customer_id":
        return CustomerRef(customer_id=request.customer_id)
    if which == "profile":
        return CustomerRef(profile=profile_to_domain(request.profile, violations))
    violation(violations, "customer", "give either customer_id or an inline profile")
    return CustomerRef()


def profile_to_domain(profile: pb.CustomerProfile, violations: Violations | None = None) -> Customer:
    name = _text(profile.risk_profile_name, "profile.risk_profile_name", 16, violations)
    if profile.HasField("risk_profile_index"):
        index = profile.risk_profile_index
        if not 0 <= index <= 1000:
            violation(violations, "profile.risk_profile_index", f"must be within 0..1000, got {index}")
    else:
        index = None  # the service maps the name with the configured table
    return Customer(customer_id=_text(profile.customer_id, "profile.customer_id", 64, violations),
                    current_monthly_payment=profile.current_monthly_payment,
                    outstanding_balance=profile.outstanding_balance, current_car_price=profile.current_car_price,
                    current_car_year=profile.current_car_year, current_car_km=profile.current_car_km,
                    risk_profile_name=name, risk_profile_index=index,
                    region=_text(profile.region, "profile.region", 64, violations),
                    current_car_brand=_text(profile.current_car_brand, "profile.current_car_brand", 64, violations),
                    current_car_model=_text(profile.current_car_model, "profile.current_car_model", 64, violations))


def overrides_to_domain(overrides: pb.PricingOverrides, violations: Violations | None = None) -> dict[str, float]:
    values = {}
    for name in OVERRIDE_FIELDS:
        if overrides.HasField(name):
            value = getattr(overrides, name)
            if not math.isfinite(value):
                violation(violations, f"overrides.{name}", f"must be finite, got {value}")
            values[name] = value
    return values


def _number(violations: Violations, name: str, value: float, low: float, high: float,
            above_low: bool = False) -> float:
    """A number of the filters within [low, high] ((low, high] if above_low)."""
    if not (math.isfinite(value) and (value > low if above_low else value >= low) and value <= high):
        violations.add(f"filters.{name}", f"must be {'>' if above_low else '>='} {low:g} and <= {high:g}, got {value}")
    return value


def _names(violations: Violations, name: str, values: Sequence[str]) -> tuple[str, ...]:
    if len(values) > MAX_FILTER_NAMES:
        violations.add(f"filters.{name}", f"at most {MAX_FILTER_NAMES} entries, got {len(values)}")
        return ()
    for k, value in enumerate(values):
        if not value:
            violations.add(f"filters.{name}[{k}]", "must not be empty")
        _text(value, f"filters.{name}[{k}]", MAX_NAME_LENGTH, violations)
    return names(values)


# How each field of ConsiderationFilters is checked (the flags need none).
_FILTER_FIELDS = {
    "price_min": lambda found, name, value: _number(found, name, value, 0.0, MAX_FILTER_AMOUNT),
    "price_max": lambda found, name, value: _number(found, name, value, 0.0, MAX_FILTER_AMOUNT),
    "max_price_vs_current": lambda found, name, value: _number(found, name, value, 0.0, MAX_FILTER_RATIO,
                                                               above_low=True),
    "year_min": lambda found, name, value: _number(found, name, value, 1950, 2100),
    "year_max": lambda found, name, value: _number(found, name, value, 1950, 2100),
    "km_max": lambda found, name, value: _number(found, name, value, 0, 2**31 - 1),
    "max_km_vs_current": lambda found, name, value: _number(found, name, value, 0.0, MAX_FILTER_RATIO),
    "brands": _names, "exclude_brands": _names, "regions": _names, "colors": _names,
    "same_brand_as_current": lambda found, name, value: value,
    "other_brand_than_current": lambda found, name, value: value,
    "promotion_only": lambda found, name, value: value,
}


def _ordered(violations: Violations, given: dict, low: str, high: str) -> None:
    if low in given and high in given and given[high] < given[low]:
        violations.add(f"filters.{high}", f"must be >= {low} ({given[low]:g}), got {given[high]:g}")


def filters_to_domain(request: Any, violations: Violations) -> ConsiderationFilters:
    """The request's filters, every field given validated (each wrong field noted in `violations`)."""
    if not request.HasField("filters"):
        return NO_FILTERS  # the unfiltered call pays nothing for the filters
    wrong = len(violations.found)
    given = {field.name: _FILTER_FIELDS[field.name](violations, field.name, value)
             for field, value in request.filters.ListFields()}  # the fields set, only
    _ordered(violations, given, "price_min", "price_max")
    _ordered(violations, given, "year_min", "year_max")
    if given.get("same_brand_as_current") and given.get("other_brand_than_current"):
        violations.add("filters.other_brand_than_current", "cannot be given with same_brand_as_current")
    if len(violations.found) > wrong:
        return NO_FILTERS  # the call fails with the violations
    return ConsiderationFilters(**given)


def offer_query(request: Any) -> OfferQuery:
    """The query of an offer request, with what is wrong in it (the service reports it all)."""
    violations = Violations()
    options = request.options
    if len(options.terms) > MAX_TERMS_IN_REQUEST:
        violations.add("options.terms", f"at most {MAX_TERMS_IN_REQUEST} terms")
    unknown = [tier for tier in options.tiers if tier not in ALL_TIERS]
    if len(options.tiers) > len(ALL_TIERS) * 4:
        violations.add("options.tiers", "too many tiers")
    elif unknown:
        violations.add("options.tiers", f"must be TIER_REFRESH, TIER_UPGRADE or TIER_MAX_UPGRADE, got {unknown[0]}")
    return OfferQuery(customer=customer_ref(request, violations),
                      overrides=overrides_to_domain(request.overrides, violations), terms=tuple(options.terms),
                      tiers=tuple(options.tiers), max_offers=options.max_offers, same_region=options.same_region,
                      max_cars=options.max_cars, filters=filters_to_domain(request, violations),
                      violations=tuple(violations.found))


def subsidy_query(request: pb.FindMinimumSubsidyRequest) -> SubsidyQuery:
    violations = Violations()
    if len(request.car_ids) > 100_000:
        violations.add("car_ids", "too many car ids")
    offer = customer_query(request, violations, same_region=request.same_region, max_cars=request.max_cars,
                           filters=filters_to_domain(request, violations))
    grid = {name: getattr(request.grid, name) for name in GRID_FIELDS if request.grid.HasField(name)}
    return SubsidyQuery(offer=offer, car_ids=tuple(request.car_ids), grid=grid, max_viable=request.max_viable)


def customer_query(request: Any, violations: Violations | None = None, **options) -> OfferQuery:
    """The customer and overrides of a request (GetAmortizationTable's; its car and term are the
    service's to check), with what is wrong in them."""
    violations = violations if violations is not None else Violations()
    return OfferQuery(customer=customer_ref(request, violations),
                      overrides=overrides_to_domain(request.overrides, violations),
                      violations=tuple(violations.found), **options)


# --- search --------------------------------------------------------------------------------------
# Each reader notes every wrong field in `violations`; the service adds its own and raises them all.
def search_filters(request: Any, violations: Violations) -> ConsiderationFilters:
    """The filters of a search: validated as on the offer calls, without those that need a customer."""
    domain = filters_to_domain(request, violations)
    given = {field.name for field, _ in request.filters.ListFields()}  # a ratio of 0 is given too
    for name in CUSTOMER_FILTERS:
        if name in given:
            violations.add(f"filters.{name}", "compares with a customer's current car: a search has no customer")
    return domain


def search_text(query: str, violations: Violations) -> str:
    words = _text(query, "query", MAX_QUERY_WORDS * (MAX_TEXT + 1), violations).split()
    if len(words) > MAX_QUERY_WORDS or any(len(w) > MAX_TEXT for w in words):
        violations.add("query", f"at most {MAX_QUERY_WORDS} words of at most {MAX_TEXT} characters")
    return " ".join(words)


def inventory_query(request: search_pb2.SearchInventoryRequest) -> InventoryQuery:
    violations = Violations()
    return InventoryQuery(text=search_text(request.query, violations), filters=search_filters(request, violations),
                          order_by=_text(request.order_by, "order_by", MAX_TEXT, violations),
                          page_size=request.page_size,
                          page_token=_text(request.page_token, "page_token", 1024, violations),
                          violations=tuple(violations.found))


def facets_query(request: search_pb2.InventoryFacetsRequest) -> tuple[str, ConsiderationFilters]:
    """The words and filters of an InventoryFacets request (its only fields), checked."""
    violations = Violations()
    text, filters = search_text(request.query, violations), search_filters(request, violations)
    violations.check()
    return text, filters


def customer_search_query(request: search_pb2.SearchCustomersRequest) -> CustomerQuery:
    violations = Violations()
    if not request.id_prefix.isascii():
        violations.add("id_prefix", "customer ids are printable ASCII")
    return CustomerQuery(id_prefix=_text(request.id_prefix, "id_prefix", MAX_TEXT, violations),
                         text=_text(request.text, "text", MAX_TEXT, violations),
                         region=_text(request.region, "region", MAX_TEXT, violations),
                         risk_profile=_text(request.risk_profile, "risk_profile", 16, violations),
                         order_by=_text(request.order_by, "order_by", MAX_TEXT, violations),
                         page_size=request.page_size,
                         page_token=_text(request.page_token, "page_token", 1024, violations),
                         violations=tuple(violations.found))


def car_page_to_pb(page: CarPage) -> search_pb2.SearchInventoryResponse:
    return search_pb2.SearchInventoryResponse(
        cars=[search_pb2.InventoryCar(car_id=c.car_id, brand=c.brand, model=c.model, year=c.year,
                                      kilometers=c.kilometers, price=c.price, regular_price=c.regular_price,
                                      on_promotion=c.has_promotion, region=c.region, color=c.color)
              for c in page.cars],
        next_page_token=page.next_page_token, total_size=page.total_size, inventory_version=page.inventory_version)


def facets_to_pb(facets: Facets) -> search_pb2.InventoryFacetsResponse:
    counts = lambda pairs: [search_pb2.FacetCount(value=v, count=n) for v, n in pairs]  # noqa: E731
    low, q1, median, q3, high = facets.prices
    return search_pb2.InventoryFacetsResponse(
        total_cars=facets.total_cars, brands=counts(facets.brands),
        years=[search_pb2.YearCount(year=y, count=n) for y, n in facets.years],
        prices=search_pb2.PriceStats(min=low, q1=q1, median=median, q3=q3, max=high),
        regions=counts(facets.regions), colors=counts(facets.colors), promotion_count=facets.promotion_count,
        inventory_version=facets.inventory_version)


def customers_to_pb(customers: Sequence[Customer], next_page_token: str) -> search_pb2.SearchCustomersResponse:
    return search_pb2.SearchCustomersResponse(
        customers=[pb.CustomerProfile(**c.__dict__) for c in customers],
        next_page_token=next_page_token)


# --- domain -> responses -------------------------------------------------------------------------
def summary_to_pb(result: OfferResult) -> pb.OfferSummary:
    counts, rejected = result.offers.tier_counts, result.offers.rejected
    wanted = set(result.tiers)
    return pb.OfferSummary(
        customer_id=result.customer.customer_id, cars_evaluated=result.offers.cars_evaluated,
        total_offers=len(result.offers),
        refresh_count=counts["Refresh"] if TIER_REFRESH in wanted else 0,
        upgrade_count=counts["Upgrade"] if TIER_UPGRADE in wanted else 0,
        max_upgrade_count=counts["Max Upgrade"] if TIER_MAX_UPGRADE in wanted else 0,
        rejected=pb.RejectionCounts(**rejected),
        timing=pb.Timing(database_ms=result.database_ms, engine_ms=result.engine_ms, total_ms=result.total_ms),
        config_version=result.config_version, inventory_version=result.inventory_version)


# Field numbers of the messages the server assembles from pre-encoded parts.
_RESPONSE_SUMMARY = pb.GenerateOffersResponse.DESCRIPTOR.fields_by_name["summary"].number
_RESPONSE_GROUPS = pb.GenerateOffersResponse.DESCRIPTOR.fields_by_name["groups"].number
_GROUP_OFFERS = pb.TierGroup.DESCRIPTOR.fields_by_name["offers"].number
_STREAM_OFFERS = pb.StreamOffersResponse.DESCRIPTOR.fields_by_name["offers"].number
_STREAM_SUMMARY = pb.StreamOffersResponse.DESCRIPTOR.fields_by_name["summary"].number
_BULK_OFFERS = pb.GenerateOffersBulkResponse.DESCRIPTOR.fields_by_name["offers"].number


@traced("encode")
def response_parts(result: OfferResult) -> list[bytes]:
    """GenerateOffersResponse, encoded in parts to be joined once (the offers are copied once,
    into the message): the small parts through protobuf, the offers by the kernel. The ranking
    puts tiers in order, so each tier group is a run of it."""
    offers = result.offers
    parts = [length_delimited(_RESPONSE_SUMMARY, summary_to_pb(result).SerializeToString())]
    position = 0
    for tier in result.tiers:
        count = offers.tier_counts[TIER_NAMES[tier]]
        last = max(position, min(position + count, result.returned))
        group = pb.TierGroup(tier=tier, count=count).SerializeToString()
        encoded = offers.encode(position, last, _GROUP_OFFERS)
        parts += (field_header(_RESPONSE_GROUPS, len(group) + len(encoded)), group, encoded)
        position += count
    return parts


def generate_response(result: OfferResult) -> bytes:
    return b"".join(response_parts(result))


def embedded(field_number: int, parts: list[bytes]) -> list[bytes]:
    """A length-delimited field of the enclosing message made of `parts`, to be joined once."""
    return [field_header(field_number, sum(map(len, parts))), *parts]


@traced("encode")
def stream_batch(result: OfferResult, first: int, last: int, with_summary: bool) -> bytes:
    """One StreamOffersResponse, encoded: offers ranked [first, last), and the summary if asked."""
    encoded = result.offers.encode(first, last, _STREAM_OFFERS)
    if with_summary:
        encoded += length_delimited(_STREAM_SUMMARY, summary_to_pb(result).SerializeToString())
    return encoded


def bulk_offers(index: int, customer_id: str, result: OfferResult) -> bytes:
    head = pb.GenerateOffersBulkResponse(index=index, customer_id=customer_id).SerializeToString()
    return b"".join((head, *embedded(_BULK_OFFERS, response_parts(result))))


def bulk_error(index: int, customer_id: str, error: ServiceError) -> bytes:
    return pb.GenerateOffersBulkResponse(index=index, customer_id=customer_id, error=pb.CustomerError(
        code=error.code, message=str(error), reason=error.reason)).SerializeToString()


def subsidy_summary(totals: SubsidyTotals) -> pb.SubsidySummary:
    return pb.SubsidySummary(candidates=totals.candidates, searched=totals.searched, viable=totals.viable,
                             iterations=totals.iterations, best_viable=subsidy_to_pb(totals.best_viable()),
                             nearest_misses=subsidy_to_pb(totals.nearest_misses()))


def subsidy_to_pb(results: Sequence[SubsidyResult]) -> list[pb.SubsidyResult]:
    return [pb.SubsidyResult(
        car_id=r.car_id, viable=r.viable, outcome=SUBSIDY_OUTCOMES[r.failure_reason], term=r.term,
        service_fee_pct=r.service_fee_pct, cac_bonus=r.cac_bonus, cxa_pct=r.cxa_pct, monthly_payment=r.monthly_payment,
        payment_delta=r.payment_delta, npv=r.npv, loan_amount=r.loan_amount, iterations_tried=r.iterations_tried)
        for r in results]


def amortization_response(offers: OfferSet, rows: Sequence[ScheduleRow]) -> pb.GetAmortizationTableResponse:
    return pb.GetAmortizationTableResponse(
        offer=offer_to_pb(offers.at_slot(0)),
        rows=[pb.AmortizationRow(**row.__dict__) for row in rows])


_OFFER_FIELDS = tuple(name for name in pb.Offer.DESCRIPTOR.fields_by_name if name != "tier")


def offer_to_pb(offer: Offer) -> pb.Offer:
    return pb.Offer(tier=TIER_BY_NAME.get(offer.tier, pb.TIER_UNSPECIFIED),
                    **{name: getattr(offer, name) for name in _OFFER_FIELDS})


# --- WatchOffers -----------------------------------------------------------------------------------
WATCH_REASONS = {watch.INITIAL: pb.WATCH_REASON_INITIAL, watch.INVENTORY: pb.WATCH_REASON_INVENTORY,
                 watch.CONFIGURATION: pb.WATCH_REASON_CONFIGURATION, watch.CUSTOMER: pb.WATCH_REASON_CUSTOMER,
                 watch.RESYNC: pb.WATCH_REASON_RESYNC, watch.ENDING: pb.WATCH_REASON_ENDING}
_WATCH_ANSWER = pb.WatchOffersResponse.DESCRIPTOR.fields_by_name["answer"].number


def watch_response(update: watch.Update) -> bytes:
    """One WatchOffersResponse, encoded once and shared by the streams of a group."""
    if update.encoded is None:
        answer = update.answer
        message = pb.WatchOffersResponse(reason=WATCH_REASONS[update.reason])
        if update.reason != watch.ENDING:
            message.summary.CopyFrom(summary_to_pb(answer.result))
            message.added.extend(offer_to_pb(offer) for offer in update.added)
            message.removed.extend(pb.OfferKey(car_id=car_id, term=term) for car_id, term in update.removed)
            message.changed.extend(offer_to_pb(offer) for offer in update.changed)
        encoded = message.SerializeToString()
        if update.full:  # the answer as GenerateOffers encodes it
            encoded = b"".join((encoded, *embedded(_WATCH_ANSWER, response_parts(answer.result))))
        update.encoded = encoded
    return update.encoded


# --- admin ---------------------------------------------------------------------------------------
def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def from_struct(struct: struct_pb2.Struct, name: str = "changes") -> dict[str, Any]:
    """A Struct as plain values. Numbers arrive as doubles (the schema accepts whole doubles where
    it wants an int); a non-finite one is refused, naming where it is."""
    return {key: _from_value(value, f"{name}.{key}") for key, value in struct.fields.items()}


def _from_value(value: struct_pb2.Value, name: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(f"must be finite, got {value.number_value}", name)
        return value.number_value
    if kind == "struct_value":
        return from_struct(value.struct_value, name)
    if kind == "list_value":
        return [_from_value(item, f"{name}[{k}]") for k, item in enumerate(value.list_value.values)]
    return {"string_value": lambda: value.string_value, "bool_value": lambda: value.bool_value}.get(
        kind, lambda: None)()


def history_to_pb(changes: Sequence[ConfigChange]) -> admin_pb2.GetConfigHistoryResponse:
    response = admin_pb2.GetConfigHistoryResponse()
    for change in changes:
        item = response.changes.add(version=change.version, key=change.key, changed_by=change.changed_by)
        item.old_value.CopyFrom(_to_value(change.old))
        item.new_value.CopyFrom(_to_value(change.new))
        item.changed_at.FromDatetime(change.changed_at)
    return response


def _to_value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def status_to_pb(status: dict[str, Any]) -> admin_pb2.GetStatusResponse:
    fields = admin_pb2.GetStatusResponse.DESCRIPTOR.fields_by_name
    return admin_pb2.GetStatusResponse(**{k: v for k, v in status.items() if k in fields})
