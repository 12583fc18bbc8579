"""Offer generation: load the customer, prefilter the inventory, price with the engine.

Protocol-neutral: takes domain requests, returns engine results, raises server.errors.
"""
from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

from engine_ext import (ALL_TIERS, CustomerTerms, Engine, EngineInputError, OfferSet, PricingParams, ScheduleRow,
                        SubsidyGrid, SubsidyResult)

from engine_ext.constants import REJECT_DOWN_PAYMENT_NOT_MET, REJECT_LOAN_NOT_POSITIVE

from ..config import Settings, SettingsStore
from ..data.filters import NO_FILTERS, ConsiderationFilters
from ..data.inventory import InventoryCache, Selection
from ..data.repository import Repository
from ..deadline import Deadline
from ..domain import Customer
from ..errors import FailedPrecondition, NotFound, Resource, Violation, Violations, violation
from ..tracing import traced
from .workers import Workers

MAX_ID_LENGTH = 64
OVERRIDE_FIELDS = ("service_fee_pct", "cxa_pct", "cac_bonus", "kavak_total_amount", "insurance_amount",
                   "interest_rate")
# The SubsidyGrid fields a request may replace for one search.
GRID_FIELDS = ("service_fee_max", "service_fee_min", "service_fee_step", "cac_min", "cac_max", "cac_step",
               "cxa_max", "cxa_min", "cxa_step", "kavak_total_enabled", "kavak_total_amount")
MAX_GRID_COMBINATIONS = 20_000  # per car: terms x service fees x CAC values x CXA values
NEAREST_MISSES = 5

@dataclass(frozen=True)
class CustomerRef:
    """A customer by id (read fresh from the database) or given inline."""
    customer_id: str | None = None
    profile: Customer | None = None


@dataclass(frozen=True)
class OfferQuery:
    customer: CustomerRef
    overrides: dict = field(default_factory=dict)   # OVERRIDE_FIELDS -> value
    terms: tuple[int, ...] = ()                     # empty: the configured terms
    tiers: tuple[int, ...] = ()                     # empty: every tier
    max_offers: int = 0                             # 0: all
    same_region: bool = False
    max_cars: int = 0                               # 0: the configured prefilter limit
    filters: ConsiderationFilters = NO_FILTERS      # cars considered (before the limit)
    violations: tuple[Violation, ...] = ()          # found while reading the request: reported with the service's


@dataclass(frozen=True)
class SubsidyQuery:
    """A minimum-subsidy search: the customer, overrides and prefilter of `offer`, the cars."""
    offer: OfferQuery
    car_ids: tuple[str, ...] = ()   # empty: the prefiltered cars
    grid: dict = field(default_factory=dict)  # SubsidyGrid field -> value, replacing the configured ones
    max_viable: int = 0             # stop after this many viable cars (0: search every car)


@dataclass
class SubsidyTotals:
    """The running totals of one minimum-subsidy search and the cars its summary ranks."""
    candidates: int
    max_viable: int = 0
    searched: int = 0
    viable: int = 0
    iterations: int = 0
    done: bool = False
    viable_results: list[SubsidyResult] = field(default_factory=list)
    missed_results: list[SubsidyResult] = field(default_factory=list)  # priced, not viable

    def add(self, results: Sequence[SubsidyResult]) -> list[SubsidyResult]:
        """Count a batch, in search order; returns the part searched before max_viable was reached."""
        for k, result in enumerate(results):
            self.searched += 1
            self.iterations += result.iterations_tried
            if result.viable:
                self.viable += 1
                self.viable_results.append(result)
                if self.viable == self.max_viable:
                    self.done = True
                    return list(results[:k + 1])
            elif result.term:
                self.missed_results.append(result)
        self.done = self.searched == self.candidates
        return list(results)

    def best_viable(self) -> list[SubsidyResult]:
        """Viable cars by npv, best first (car_id on ties); at most max_viable."""
        return sorted(self.viable_results, key=lambda r: (-r.npv, r.car_id))[:self.max_viable or None]

    def nearest_misses(self, count: int = NEAREST_MISSES) -> list[SubsidyResult]:
        """The non-viable priced cars nearest to the payment gate: smallest |delta| first."""
        return heapq.nsmallest(count, self.missed_results, key=lambda r: (abs(r.payment_delta), r.car_id))


@dataclass(frozen=True)
class OfferResult:
    customer: Customer
    offers: OfferSet
    tiers: tuple[int, ...]
    returned: int           # offers returned after max_offers
    database_ms: float
    engine_ms: float
    started: float          # perf_counter at the start of the call
    config_version: int = 0     # of the settings it was priced with
    inventory_version: int = 0  # of the inventory snapshot its cars came from

    @property
    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3


def validate_customer(customer: Customer, inline: bool, table_rows: int, violations: Violations | None = None) -> None:
    """A customer the engine can price, every wrong field at once: noted in `violations` if given,
    else raised; inline mistakes are the caller's (INVALID_ARGUMENT), stored ones are not
    (FAILED_PRECONDITION)."""
    found = violations if violations is not None else \
        Violations() if inline else Violations(FailedPrecondition, "CUSTOMER_RECORD_INVALID")
    prefix = "profile." if inline else f"customer {customer.customer_id}: "
    checks = (
        ("current_monthly_payment", customer.current_monthly_payment, 0.0, 1e9, True),
        ("outstanding_balance", customer.outstanding_balance, 0.0, 1e10, False),
        ("current_car_price", customer.current_car_price, 0.0, 1e10, True),
    )
    for name, value, low, high, strict in checks:
        if not math.isfinite(value) or value < low or (strict and value == low) or value > high:
            bound = f"> {low}" if strict else f">= {low}"
            found.add(f"{prefix}{name}", f"must be a finite amount {bound} and <= {high:g} MXN, got {value}")
    if not 1950 <= customer.current_car_year <= 2100:
        found.add(f"{prefix}current_car_year", f"must be within 1950..2100, got {customer.current_car_year}")
    if not 0 <= customer.current_car_km <= 10_000_000:
        found.add(f"{prefix}current_car_km", f"must be within 0..10,000,000, got {customer.current_car_km}")
    if not 0 <= customer.risk_profile_index < table_rows:
        found.add(f"{prefix}risk_profile_index", f"must be within 0..{table_rows - 1} (rows of the "
                  f"down-payment table), got {customer.risk_profile_index}")
    if len(customer.risk_profile_name) > 16:
        found.add(f"{prefix}risk_profile_name", "must be at most 16 characters")
    for name in ("region", "current_car_brand", "current_car_model"):
        if len(getattr(customer, name)) > 64:
            found.add(f"{prefix}{name}", "must be at most 64 characters")
    if violations is None:
        found.check()


class OfferService:
    def __init__(self, settings: SettingsStore, repository: Repository, inventory: InventoryCache, engine: Engine,
                 workers: Workers, on_priced: Callable[["OfferResult"], None] | None = None):
        self.settings = settings
        self.repository = repository
        self.inventory = inventory
        self.engine = engine
        self.workers = workers  # each operation's work holds a place (see Workers)
        self.on_priced = on_priced  # every priced request, e.g. for metrics

    # --- building blocks ----------------------------------------------------------------------
    # Each takes the settings of the call (read once per call: one configuration version).
    def check(self, query: OfferQuery, settings: Settings, violations: Violations | None = None) -> PricingParams:
        """Every wrong field of the request, with those its reading found (query.violations):
        tiers, overrides and terms, max_cars, the customer id or the inline profile; noted in
        `violations` if given (the caller adds its own and raises them all), else raised. Returns
        the pricing parameters."""
        found = violations if violations is not None else Violations()
        for each in query.violations:
            found.add(each.field, each.description)
        if any(t not in ALL_TIERS for t in query.tiers):
            found.add("options.tiers", "must be TIER_REFRESH, TIER_UPGRADE or TIER_MAX_UPGRADE")
        params = self.params_for(query, settings, found)
        if query.max_cars > settings.prefilter.max_limit:
            found.add("options.max_cars", f"must be at most {settings.prefilter.max_limit}, got {query.max_cars}")
        customer_id = query.customer.customer_id
        if query.customer.profile is not None:
            self.inline_profile(query.customer.profile, settings.business, found)
        elif customer_id == "":
            found.add("customer_id", "is required (or give an inline profile)")
        elif customer_id is not None and (len(customer_id) > MAX_ID_LENGTH or not customer_id.isprintable()):
            found.add("customer_id", f"must be at most {MAX_ID_LENGTH} printable characters")
        if violations is None:
            found.check()
        return params

    @staticmethod
    def inline_profile(profile: Customer, business: PricingParams, violations: Violations | None = None) -> Customer:
        """An inline profile with its row of the down-payment table (by name unless given), validated."""
        if profile.risk_profile_index is None:
            profile = replace(profile, risk_profile_index=business.profile_index(profile.risk_profile_name))
        validate_customer(profile, inline=True, table_rows=len(business.down_payment_rows), violations=violations)
        return profile

    @traced("load customer")
    def load_customer(self, ref: CustomerRef, deadline: Deadline, settings: Settings | None = None) -> Customer:
        """The customer of a checked request (see check)."""
        business = (settings or self.settings.current).business
        if ref.profile is not None:
            return self.inline_profile(ref.profile, business)
        customer_id = ref.customer_id or ""
        deadline.check("before the customer lookup")
        customer = self.repository.get_customer(customer_id, deadline)
        if customer is None:
            raise NotFound(f"no customer {customer_id!r}", "customer_id", reason="CUSTOMER_NOT_FOUND",
                           resource=Resource("tradeup.v1.Customer", customer_id))
        validate_customer(customer, inline=False, table_rows=len(business.down_payment_rows))
        return customer

    def params_for(self, query: OfferQuery, settings: Settings | None = None,
                   violations: Violations | None = None) -> PricingParams:
        """The configured business parameters with this request's overrides (validated: a wrong
        one is noted in `violations` if given, else raised)."""
        params = (settings or self.settings.current).business
        overrides = {**query.overrides, "terms": query.terms or None}
        try:
            return params.with_overrides(**overrides)
        except EngineInputError:
            for exc in params.override_errors(**overrides):
                name = {"rate_override": "overrides.interest_rate", "terms": "options.terms",
                        "terms[]": "options.terms"}.get(exc.field, f"overrides.{exc.field.removeprefix('fees.')}")
                violation(violations, name, exc.reason)
            return params

    @traced("prefilter")
    def prefilter(self, customer: Customer, same_region: bool, max_cars: int, deadline: Deadline,
                  settings: Settings | None = None, filters: ConsiderationFilters = NO_FILTERS) -> Selection:
        settings = (settings or self.settings.current).prefilter
        limit = max_cars or settings.default_limit  # at most max_limit (see check)
        bounds = filters.resolve(customer)
        deadline.check("before the prefilter")
        if settings.mode == "sql":
            return self.inventory.prefilter_sql(self.engine.kernel, customer, same_region, limit, deadline, bounds)
        return self.inventory.snapshot(deadline).match(self.engine.kernel, customer, same_region, limit, bounds)

    @staticmethod
    def terms_of(customer: Customer) -> CustomerTerms:
        return CustomerTerms.from_balance(customer.current_monthly_payment, customer.current_car_price,
                                          customer.outstanding_balance, customer.risk_profile_name,
                                          customer.risk_profile_index)

    # --- the operations -----------------------------------------------------------------------
    def generate(self, query: OfferQuery, deadline: Deadline) -> OfferResult:
        started = time.perf_counter()
        settings = self.settings.current
        params = self.check(query, settings)
        tiers = tuple(sorted(set(query.tiers))) or ALL_TIERS
        with self.workers.place(deadline):
            return self._generate(query, deadline, started, tiers, settings, params)

    def _generate(self, query: OfferQuery, deadline: Deadline, started: float, tiers: tuple[int, ...],
                  settings: Settings, params: PricingParams) -> OfferResult:
        customer = self.load_customer(query.customer, deadline, settings)
        selection = self.prefilter(customer, query.same_region, query.max_cars, deadline, settings, query.filters)
        priced = time.perf_counter()
        deadline.check("before pricing")
        offers = self.price(customer, selection, params, tiers, best=query.max_offers)
        done = time.perf_counter()
        returned = len(offers) if not query.max_offers else min(query.max_offers, len(offers))
        result = OfferResult(customer=customer, offers=offers, tiers=tiers, returned=returned,
                             database_ms=(priced - started) * 1e3, engine_ms=(done - priced) * 1e3, started=started,
                             config_version=settings.version, inventory_version=selection.inventory_version)
        if self.on_priced:
            self.on_priced(result)
        return result

    @traced("pricing")
    def price(self, customer: Customer, selection: Selection, params: PricingParams,
              tiers: tuple[int, ...] = ALL_TIERS, best: int = 0) -> OfferSet:
        """Every offer of `tiers` for the selected cars, ranked (only the `best` ones when > 0)."""
        try:
            return self.engine.price(self.terms_of(customer), selection.car_ids, selection.prices, params,
                                     tiers=tiers, car_rank=selection.ranks, best=best)
        except EngineInputError as exc:
            raise FailedPrecondition(exc.reason, exc.field, reason="PRICING_INPUT_REJECTED") from None

    def subsidy_cars(self, customer: Customer, car_ids: Sequence[str], same_region: bool, max_cars: int,
                     deadline: Deadline, settings: Settings | None = None,
                     filters: ConsiderationFilters = NO_FILTERS) -> Selection:
        """The cars to search: the given ids (at most prefilter.max_limit, see subsidy_params; each
        looked up in the inventory), else the prefilter."""
        settings = settings or self.settings.current
        if not car_ids:
            return self.prefilter(customer, same_region, max_cars, deadline, settings, filters)
        deadline.check("before the inventory lookup")
        snapshot = self.inventory.snapshot(deadline)
        rows = []
        for k, car_id in enumerate(car_ids):
            row = snapshot.row_of.get(car_id)
            if row is None:
                raise NotFound(f"no available car {car_id[:MAX_ID_LENGTH]!r}", f"car_ids[{k}]", reason="CAR_NOT_FOUND",
                               resource=Resource("tradeup.v1.Car", car_id[:MAX_ID_LENGTH]))
            rows.append(row)
        return snapshot.select(self.engine.kernel, rows)

    def subsidy_params(self, query: SubsidyQuery, settings: Settings) -> PricingParams:
        """The parameters of a search: the overrides, and the request's grid instead of the
        configured one. Every wrong field of the request is raised at once."""
        violations = Violations()
        params = self.check(query.offer, settings, violations)
        limit = settings.prefilter.max_limit
        if len(query.car_ids) > limit:
            violations.add("car_ids", f"at most {limit} cars, got {len(query.car_ids)}")
        grid = self.request_grid(params.subsidy, query.grid, violations)
        violations.check()
        return replace(params, subsidy=grid)

    @staticmethod
    def request_grid(configured: SubsidyGrid, changes: dict, violations: Violations) -> SubsidyGrid:
        """The configured grid with a request's changes; each wrong one noted in `violations`."""
        if not changes:
            return configured
        try:
            grid = replace(configured, **changes)
        except EngineInputError:
            for exc in configured.change_errors(**changes):
                violations.add(exc.field.replace("subsidy.", "grid."), exc.reason.replace("subsidy.", "grid."))
            return configured
        combinations = (len(grid.term_order) * len(grid.service_fee_values()) * len(grid.cac_values())
                        * len(grid.cxa_values()))
        if combinations > MAX_GRID_COMBINATIONS:
            violations.add("grid", f"gives {combinations:,} combinations per car; at most {MAX_GRID_COMBINATIONS:,}")
        return grid

    def find_minimum_subsidy(self, query: SubsidyQuery, deadline: Deadline, batch_size: int,
                             is_active: Callable[[], bool]) -> Iterator[tuple[Customer, list[SubsidyResult], SubsidyTotals]]:
        """The minimum-subsidy search over the given cars (else the prefilter's), in batches of
        `batch_size` cars: (customer, the batch's results, the running totals; `done` on the
        last). It stops after `max_viable` viable cars, as the lender's engine does. Each batch
        holds a worker place only while it computes; a call whose client left stops."""
        settings = self.settings.current  # one configuration version for the whole call
        params = self.subsidy_params(query, settings)
        with self.workers.place(deadline):
            customer = self.load_customer(query.offer.customer, deadline, settings)
            selection = self.subsidy_cars(customer, query.car_ids, query.offer.same_region, query.offer.max_cars,
                                          deadline, settings, query.offer.filters)
        totals = SubsidyTotals(candidates=len(selection.car_ids), max_viable=query.max_viable)
        for first in range(0, max(totals.candidates, 1), batch_size):
            if first and not is_active():
                return
            with self.workers.place(deadline):
                deadline.check("during the subsidy search")
                results = self._minimum_subsidy(customer, selection, params, first,
                                                min(first + batch_size, totals.candidates))
            yield customer, totals.add(results), totals
            if totals.done:
                return

    @traced("subsidy search")
    def _minimum_subsidy(self, customer: Customer, selection: Selection, params: PricingParams,
                         first: int, last: int) -> list[SubsidyResult]:
        """Search cars [first, last) of the selection."""
        try:
            return self.engine.minimum_subsidy(self.terms_of(customer), selection.car_ids[first:last],
                                               selection.prices[first:last], params)
        except EngineInputError as exc:
            raise FailedPrecondition(exc.reason, exc.field, reason="PRICING_INPUT_REJECTED") from None

    def amortization(self, query: OfferQuery, car_id: str, term: int,
                     deadline: Deadline) -> tuple[OfferSet, list[ScheduleRow]]:
        """The offer (priced, whatever its tier) and the schedule of one (customer, car, term);
        the query gives the customer and the overrides."""
        settings = self.settings.current
        violations = Violations()
        params = self.check(query, settings, violations)
        if not car_id:
            violations.add("car_id", "is required")
        try:
            params.check_terms([term], "term")
        except EngineInputError as exc:
            violations.add("term", exc.reason)
        violations.check()
        with self.workers.place(deadline):
            return self._amortization(query.customer, car_id, term, deadline, settings, params)

    def _amortization(self, ref: CustomerRef, car_id: str, term: int, deadline: Deadline, settings: Settings,
                      params: PricingParams) -> tuple[OfferSet, list[ScheduleRow]]:
        customer = self.load_customer(ref, deadline, settings)
        try:
            selection = self.subsidy_cars(customer, [car_id], False, 0, deadline, settings)
        except NotFound as exc:  # named by this request's field
            raise NotFound(str(exc).split(": ", 1)[-1], "car_id", reason=exc.reason, resource=exc.resource) from None
        params = params.with_overrides(terms=[term])
        offer = self.price(customer, selection, params)
        try:
            rows = self.engine.schedule(self.terms_of(customer), selection.prices[0], term, params)
        except EngineInputError as exc:
            raise FailedPrecondition(exc.reason, exc.field, reason="PRICING_INPUT_REJECTED") from None
        status = offer.columns.status[0]
        if status in (REJECT_DOWN_PAYMENT_NOT_MET, REJECT_LOAN_NOT_POSITIVE):
            reason = "down payment not met" if status == REJECT_DOWN_PAYMENT_NOT_MET else "the equity covers the whole price"
            raise FailedPrecondition(f"car {car_id} cannot be financed over {term} months for this customer: {reason}",
                                     "car_id", reason="OFFER_NOT_FINANCEABLE")
        return offer, rows
