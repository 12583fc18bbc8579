"""The engine API the server calls: batches of cars in, offers / schedules / subsidy results out.

The kernel (compiled or twin) does the arithmetic; this module validates, allocates the
output columns, fans a request's cars out over a thread pool (the compiled kernel releases
the GIL, so chunks run in parallel) and exposes the results. Workers write disjoint slices
of the same columns, and one final ranking pass orders them, so the result does not depend
on the number of workers.
"""
from __future__ import annotations

import copy
import os
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence, overload

import numpy as np

from .constants import (
    ALL_TIERS, REJECT_NAMES, SCHEDULE_COLUMNS, SUBSIDY_REASONS, SUBSIDY_VIABLE, TIER_NAMES,
)
from .errors import EngineInputError
from .params import CustomerTerms, PricingParams
from .plan import OfferPlan, build_offer_plan, build_subsidy_plan


def _doubles(n: int) -> array:
    return array("d", bytes(8 * n))


def _longs(n: int) -> array:
    return array("l", bytes(array("l").itemsize * n))


def _array(values: np.ndarray, typecode: str) -> array:
    """`values` as the kernel's column type."""
    kept = array(typecode)
    kept.frombytes(values.astype(typecode).tobytes())
    return kept


class OfferBuffers:
    """Kernel output: per car, then per (car, term) slot = car * n_terms + term index."""
    __slots__ = ("equity", "service_fee", "cxa", "npv", "financed", "payment", "delta", "status")

    def __init__(self, n_cars: int, n_terms: int):
        for name in ("equity", "service_fee", "cxa", "npv", "financed"):
            setattr(self, name, _doubles(n_cars))
        self.payment = _doubles(n_cars * n_terms)
        self.delta = _doubles(n_cars * n_terms)
        self.status = array("b", bytes(n_cars * n_terms))


class SubsidyBuffers:
    """Kernel output of the minimum-subsidy search: one entry per car."""
    __slots__ = ("status", "term", "service_fee_pct", "cac_bonus", "cxa_pct", "payment", "delta",
                 "npv", "financed", "iterations")

    def __init__(self, n_cars: int):
        self.status = array("b", bytes(n_cars))
        self.term = _longs(n_cars)
        self.iterations = _longs(n_cars)
        for name in ("service_fee_pct", "cac_bonus", "cxa_pct", "payment", "delta", "npv", "financed"):
            setattr(self, name, _doubles(n_cars))


class CarIds(Sequence[str]):
    """The ids of cars taken from a longer list, without copying them: car k is names[rows[k]]
    (the prefilter's rows of the inventory snapshot). The encoder reads both directly."""
    __slots__ = ("names", "rows")

    def __init__(self, names: list[str], rows: array):
        self.names = names
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, k: int) -> str: ...
    @overload
    def __getitem__(self, k: slice) -> "CarIds": ...

    def __getitem__(self, k):
        if isinstance(k, slice):
            return CarIds(self.names, self.rows[k])
        return self.names[self.rows[k]]

    def __eq__(self, other) -> bool:
        """Equal to a list, tuple or CarIds of the same ids in the same order."""
        if not isinstance(other, (CarIds, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # mutable rows: not a key


@dataclass(frozen=True)
class Offer:
    """One car x one term for one customer. Money in MXN; rates and deltas as fractions."""
    car_id: str
    term: int
    tier: str
    monthly_payment: float
    payment_delta: float
    loan_amount: float          # total financed: L + SF + KT + INS
    effective_equity: float
    service_fee_amount: float
    cxa_amount: float
    kavak_total_amount: float
    insurance_amount: float
    gps_install_fee: float      # IVA included
    gps_monthly_fee: float      # IVA included
    npv: float
    interest_rate: float        # annual, after the term adjustment


class OfferSet:
    """The ranked offers of one request, as columns (cheap to encode) and as `Offer` objects.
    `order` ranks them all, or only the best when the request wants no more (`count` are offers)."""

    def __init__(self, plan: OfferPlan, car_ids: Sequence[str], out: OfferBuffers, order: array, counts: array,
                 kernel, count: int):
        self.kernel = kernel
        self.plan = plan
        self.car_ids = car_ids
        self.columns = out
        self.order = order  # slots, best first
        self.count = count
        self.tier_counts = {TIER_NAMES[t]: counts[t] for t in ALL_TIERS}
        self.rejected = {name: counts[3 - code] for code, name in REJECT_NAMES.items()}
        self.cars_evaluated = len(car_ids)

    def __len__(self) -> int:
        """The offers of the wanted tiers (ranked or not: see `order`)."""
        return self.count

    def best(self, count: int) -> "OfferSet":
        """The same answer holding only its `count` best offers (the counts unchanged): what an
        answer kept for long needs, without the columns of every other car priced. The columns
        are gathered by numpy (copies, no arithmetic)."""
        n_terms = len(self.plan.columns.terms)
        slots = np.frombuffer(self.order, dtype=self.order.typecode)[:count]
        cars = np.unique(slots // n_terms)  # the new car k is the k-th of these
        kept_slots = (cars[:, None] * n_terms + np.arange(n_terms)).ravel()
        out = OfferBuffers(0, n_terms)
        for name, rows in (("equity", cars), ("service_fee", cars), ("cxa", cars), ("npv", cars),
                           ("financed", cars), ("payment", kept_slots), ("delta", kept_slots),
                           ("status", kept_slots)):
            column = getattr(self.columns, name)
            setattr(out, name, _array(np.frombuffer(column, dtype=column.typecode)[rows], column.typecode))
        order = np.searchsorted(cars, slots // n_terms) * n_terms + slots % n_terms
        best = copy.copy(self)
        best.car_ids = [self.car_ids[car] for car in cars.tolist()]
        best.columns = out
        best.order = _array(order, self.order.typecode)
        return best

    def offer(self, position: int) -> Offer:
        """The offer ranked at `position` (0 = best)."""
        return self.at_slot(self.order[position])

    def at_slot(self, slot: int) -> Offer:
        """The priced (car, term) slot car * n_terms + t; tier "" when it is outside every tier."""
        plan, out = self.plan, self.columns
        n_terms = len(plan.columns.terms)
        car, t = divmod(slot, n_terms)
        return Offer(
            car_id=self.car_ids[car], term=plan.columns.terms[t], tier=TIER_NAMES.get(out.status[slot], ""),
            monthly_payment=out.payment[slot], payment_delta=out.delta[slot], loan_amount=out.financed[car],
            effective_equity=out.equity[car], service_fee_amount=out.service_fee[car], cxa_amount=out.cxa[car],
            kavak_total_amount=plan.kavak_total, insurance_amount=plan.insurance,
            gps_install_fee=plan.gps_install, gps_monthly_fee=plan.gps_monthly, npv=out.npv[car],
            interest_rate=plan.columns.annual_rates[t])

    def __iter__(self) -> Iterator[Offer]:
        return (self.offer(k) for k in range(len(self.order)))

    def encode(self, first: int, last: int, field_number: int) -> bytes:
        """Protobuf wire bytes of the offers ranked [first, last) as repeated `tradeup.v1.Offer`
        field `field_number` of the enclosing message (see wire_py.py)."""
        if first >= last:  # none (positions past the ranked best are none too)
            return b""
        ids = self.car_ids
        names, rows = (ids.names, ids.rows) if isinstance(ids, CarIds) else (ids, None)
        return self.kernel.encode_offers(self.plan, self.columns, names, rows, self.order, first, last, field_number)


@dataclass(frozen=True)
class ScheduleRow:
    """One month of the lender's spreadsheet; money in MXN."""
    cuota: int                   # month number, 1-based
    saldo_insoluto: float        # balance at the start of the month (all four components)
    capital: float               # principal paid (plus the GPS installation in month 1)
    interes: float               # interest before IVA
    cargos: float                # GPS monthly fee before IVA
    iva: float                   # IVA on interest and charges
    exigible: float              # amount due this month
    end_balance_main: float
    end_balance_service_fee: float
    end_balance_kavak_total: float
    end_balance_insurance: float
    end_balance_total: float


@dataclass(frozen=True)
class SubsidyResult:
    """Outcome of the minimum-subsidy search for one car (SPEC §3)."""
    car_id: str
    viable: bool
    failure_reason: str | None   # None when viable
    term: int                    # 0 when no combination could be priced
    service_fee_pct: float
    cac_bonus: float
    cxa_pct: float
    monthly_payment: float
    payment_delta: float
    npv: float
    loan_amount: float           # total financed
    iterations_tried: int


class Engine:
    """Prices batches of cars with one kernel, fanned out over a shared thread pool."""

    def __init__(self, kernel, workers: int | None = None, offer_chunk_cars: int = 16384,
                 subsidy_chunk_cars: int = 64):
        """`workers`: threads per request (default: CPU count). A chunk is the least work worth a
        thread hand-off: pricing a car takes ~5 ns, searching its subsidy grid ~15 us."""
        if workers is not None and workers < 1:
            raise EngineInputError("engine.workers", f"must be >= 1, got {workers}")
        for name, value in (("offer_chunk_cars", offer_chunk_cars), ("subsidy_chunk_cars", subsidy_chunk_cars)):
            if value < 1:
                raise EngineInputError(f"engine.{name}", f"must be >= 1, got {value}")
        self.kernel = kernel
        self.workers = workers or os.cpu_count() or 1
        self.offer_chunk_cars = offer_chunk_cars
        self.subsidy_chunk_cars = subsidy_chunk_cars
        self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="engine") if self.workers > 1 else None

    @property
    def implementation(self) -> str:
        return self.kernel.IMPLEMENTATION

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _fan_out(self, work, n_cars: int, chunk_cars: int) -> None:
        """Run work(first, last) over [0, n_cars) in chunks of about `chunk_cars`, pulled from one
        shared queue by this thread and up to workers - 1 pool threads, so that uneven chunks
        (the subsidy search stops early on some cars) still balance. Each call returns -1 or
        the index of an invalid price."""
        size = max(chunk_cars, -(-n_cars // (4 * self.workers)))
        starts = iter(range(0, n_cars, size))  # shared: each chunk is taken exactly once

        def drain() -> list[int]:
            return [bad for first in starts if (bad := work(first, min(first + size, n_cars))) >= 0]

        helpers = min(self.workers - 1, -(-n_cars // size) - 1)
        futures = [self._pool.submit(drain) for _ in range(helpers)]
        invalid = drain()
        for future in futures:
            invalid += future.result()
        if invalid:
            raise EngineInputError(f"cars[{min(invalid)}].price", "must be a finite amount > 0 and at most 1e10 MXN")

    @staticmethod
    def _prices(prices: Sequence[float], car_ids: Sequence[str]) -> array:
        if len(prices) != len(car_ids):
            raise EngineInputError("cars", f"{len(car_ids)} ids but {len(prices)} prices")
        try:
            return prices if isinstance(prices, array) and prices.typecode == "d" else array("d", prices)
        except TypeError:
            raise EngineInputError("cars.price", "prices must be numbers") from None

    def price(self, customer: CustomerTerms, car_ids: Sequence[str], prices: Sequence[float],
              params: PricingParams, tiers: Sequence[int] = ALL_TIERS,
              car_rank: Sequence[int] | None = None, best: int = 0) -> OfferSet:
        """Every feasible offer of `tiers` for these cars, ranked by SPEC §3 (only the `best`
        ones when > 0), with rejection counts. `car_rank[k]` orders car k by car_id for ties;
        computed when not given."""
        prices = self._prices(prices, car_ids)
        car_ids = car_ids if isinstance(car_ids, (list, CarIds)) else list(car_ids)  # what the encoder reads
        plan = build_offer_plan(customer, params)
        out = OfferBuffers(len(prices), len(plan.columns.terms))
        self._fan_out(lambda first, last: self.kernel.price_offers(plan, prices, first, last, out),
                      len(prices), self.offer_chunk_cars)
        if car_rank is None:
            car_rank = _rank_by_id(car_ids)
        elif not isinstance(car_rank, array):
            car_rank = array("l", car_rank)
        tier_mask = sum(1 << t for t in tiers)
        order, counts = self.kernel.rank_offers(plan, out, len(prices), car_rank, tier_mask, best)
        return OfferSet(plan, car_ids, out, order, counts, self.kernel, sum(counts[t] for t in tiers))

    def schedule(self, customer: CustomerTerms, price: float, term: int, params: PricingParams) -> list[ScheduleRow]:
        """The amortization schedule of one offer (SPEC §3), feasible or not."""
        term = params.check_terms([term], "term")[0]
        plan = build_offer_plan(customer, params, (term,))
        if not self.kernel.is_valid_price(price):
            raise EngineInputError("car.price", "must be a finite amount > 0 and at most 1e10 MXN")
        flat = self.kernel.amortization(plan, 0, float(price))
        width = len(SCHEDULE_COLUMNS)
        return [ScheduleRow(int(flat[r]), *flat[r + 1:r + width]) for r in range(0, len(flat), width)]

    def minimum_subsidy(self, customer: CustomerTerms, car_ids: Sequence[str], prices: Sequence[float],
                        params: PricingParams) -> list[SubsidyResult]:
        """The minimum-subsidy result of each car, in the order given."""
        prices = self._prices(prices, car_ids)
        splan = build_subsidy_plan(customer, params)
        out = SubsidyBuffers(len(prices))
        self._fan_out(lambda first, last: self.kernel.subsidy_search(splan, prices, first, last, out),
                      len(prices), self.subsidy_chunk_cars)
        return [SubsidyResult(
            car_id=car_id, viable=out.status[k] == SUBSIDY_VIABLE, failure_reason=SUBSIDY_REASONS[out.status[k]],
            term=out.term[k], service_fee_pct=out.service_fee_pct[k], cac_bonus=out.cac_bonus[k],
            cxa_pct=out.cxa_pct[k], monthly_payment=out.payment[k], payment_delta=out.delta[k], npv=out.npv[k],
            loan_amount=out.financed[k], iterations_tried=out.iterations[k]) for k, car_id in enumerate(car_ids)]


def _rank_by_id(car_ids: Sequence[str]) -> array:
    rank = array("l", bytes(array("l").itemsize * len(car_ids)))
    for position, car in enumerate(sorted(range(len(car_ids)), key=car_ids.__getitem__)):
        rank[car] = position
    return rank
