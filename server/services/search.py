"""Inventory and customer search: the pages and facets of the screens that pick a car or a customer.

Cars are answered from the inventory snapshot the offers are priced from, through a columnar
index built once per snapshot generation (numpy columns, one sort order per sort key), so a
page or the facets cost a few vectorized passes over the cars. Customers are read from the
database (Repository.search_customers), a page at a time on indexed columns.

Pages use keyset tokens: a token names the query it belongs to (a digest of every field but
the paging ones) and the sort key of the last item returned, so a page stays correct while cars
come and go between two calls.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import json
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy

from ..data.inventory import InventoryCache, InventorySnapshot
from ..data.repository import Repository
from ..deadline import Deadline
from ..domain import Car, Customer
from ..errors import InvalidArgument
from .workers import Workers

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_QUERY_WORDS = 10
MAX_TEXT = 64
INVENTORY_ORDERS = ("car_id", "price", "year", "kilometers")  # each also " desc" but car_id
CUSTOMER_ORDERS = ("customer_id", "customer_id desc")


@dataclass(frozen=True)
class CarFilters:
    """The ConsiderationFilters that select cars by their own fields. Lists hold lower-cased names."""
    price_min: float | None = None
    price_max: float | None = None
    brands: tuple[str, ...] = ()
    exclude_brands: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None
    km_max: int | None = None
    promotion_only: bool = False
    regions: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()


@dataclass(frozen=True)
class InventoryQuery:
    text: str = ""
    filters: CarFilters = field(default_factory=CarFilters)
    order_by: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class CustomerQuery:
    id_prefix: str = ""
    text: str = ""
    region: str = ""
    risk_profile: str = ""
    order_by: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class CarPage:
    cars: list[Car]
    next_page_token: str
    total_size: int
    inventory_version: int


@dataclass(frozen=True)
class Facets:
    total_cars: int
    brands: list[tuple[str, int]]     # most cars first, then by name
    years: list[tuple[int, int]]      # newest first
    prices: tuple[float, float, float, float, float]  # min, q1, median, q3, max (MXN)
    regions: list[tuple[str, int]]
    colors: list[tuple[str, int]]
    promotion_count: int
    inventory_version: int


# --- paging ----------------------------------------------------------------------------------------
def page_size_of(size: int) -> int:
    """AIP-158: 0 is the default, above the maximum is the maximum, negative is an error."""
    if size < 0:
        raise InvalidArgument(f"must be >= 0, got {size}", "page_size")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def query_digest(query: Any) -> str:
    """Names a query whatever its paging: a token is valid only for the query that produced it."""
    return hashlib.sha256(repr(replace(query, page_size=0, page_token="")).encode()).hexdigest()[:16]


def make_token(query: Any, key: list) -> str:
    data = json.dumps([query_digest(query), *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def read_token(query: Any, arity: int) -> list | None:
    """The key after which the page starts (None: the first page)."""
    if not query.page_token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(query.page_token + "=" * (-len(query.page_token) % 4)))
        valid = isinstance(data, list) and len(data) == arity + 1 and data[0] == query_digest(query)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise InvalidArgument("is not a token of this query (give the next_page_token of the same query)",
                              "page_token")
    return data[1:]


# --- the inventory index -------------------------------------------------------------------------
def _codes(values: Sequence[str]) -> tuple[list[str], numpy.ndarray]:
    """(distinct values, the code of each value), codes in order of first appearance."""
    table: dict[str, int] = {}
    codes = numpy.fromiter((table.setdefault(v, len(table)) for v in values), dtype=numpy.int32, count=len(values))
    return list(table), codes


def _matching(names: list[str], wanted: Sequence[str]) -> numpy.ndarray:
    """Codes of the names that equal one of `wanted` (lower-cased), ignoring case."""
    wanted = set(wanted)
    return numpy.array([k for k, name in enumerate(names) if name.lower() in wanted], dtype=numpy.int32)


class InventoryIndex:
    """Search columns over one snapshot's cars, in the snapshot's row order."""

    def __init__(self, snapshot: InventorySnapshot):
        self.generation = snapshot.generation
        self.version = snapshot.version
        ids = snapshot.car_ids
        self.cars = [snapshot.by_id[car_id] for car_id in ids]
        self.years = numpy.frombuffer(snapshot.years, dtype=numpy.dtype(snapshot.years.typecode))
        self.prices = numpy.frombuffer(snapshot.prices, dtype=numpy.float64)
        self.kilometers = numpy.frombuffer(snapshot.kilometers, dtype=numpy.dtype(snapshot.kilometers.typecode))
        self.promotion = numpy.fromiter((c.has_promotion for c in self.cars), dtype=bool, count=len(ids))
        self.brands, self.brand_codes = _codes([c.brand for c in self.cars])
        self.regions, self.region_codes = _codes([c.region for c in self.cars])
        self.colors, self.color_codes = _codes([c.color for c in self.cars])
        self.models, self.model_codes = _codes([f"{c.brand}\n{c.model}".lower() for c in self.cars])
        # Rows by car_id: the tie-break of every order, and the id-prefix search.
        self.by_id = numpy.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=numpy.int64)
        self.sorted_ids = [ids[r].lower() for r in self.by_id]
        self.id_rank = numpy.empty(len(ids), dtype=numpy.int64)
        self.id_rank[self.by_id] = numpy.arange(len(ids))
        self._orders: dict[tuple[str, bool], numpy.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.cars)

    def values(self, key: str) -> numpy.ndarray:
        return {"price": self.prices, "year": self.years, "kilometers": self.kilometers, "car_id": self.id_rank}[key]

    def order(self, key: str, descending: bool) -> numpy.ndarray:
        """Rows sorted by `key` (descending if asked), ties by car_id ascending; computed once."""
        with self._lock:
            rows = self._orders.get((key, descending))
            if rows is None:
                values = self.values(key)
                rows = self.by_id if key == "car_id" else numpy.lexsort(
                    (self.id_rank, -values if descending else values))
                self._orders[key, descending] = rows
            return rows

    def mask(self, text: str, filters: CarFilters) -> numpy.ndarray | None:
        """The rows matching (None: every row)."""
        tests = []
        f = filters
        for bound, column, above in ((f.price_min, self.prices, True), (f.price_max, self.prices, False),
                                     (f.year_min, self.years, True), (f.year_max, self.years, False),
                                     (f.km_max, self.kilometers, False)):
            if bound is not None:
                tests.append(column >= bound if above else column <= bound)
        for wanted, names, codes, keep in ((f.brands, self.brands, self.brand_codes, True),
                                           (f.exclude_brands, self.brands, self.brand_codes, False),
                                           (f.regions, self.regions, self.region_codes, True),
                                           (f.colors, self.colors, self.color_codes, True)):
            if wanted:
                found = numpy.isin(codes, _matching(names, wanted))
                tests.append(found if keep else ~found)
        if f.promotion_only:
            tests.append(self.promotion)
        tests += [self._word(word) for word in text.lower().split()]
        if not tests:
            return None
        mask = tests[0].copy()
        for test in tests[1:]:
            mask &= test
        return mask

    def _word(self, word: str) -> numpy.ndarray:
        """Rows whose id starts with `word` or whose brand or model contains it."""
        models = numpy.array([k for k, name in enumerate(self.models)
                              if any(word in part for part in name.split("\n"))], dtype=numpy.int32)
        matched = numpy.isin(self.model_codes, models)
        first = bisect.bisect_left(self.sorted_ids, word)
        last = bisect.bisect_left(self.sorted_ids, word + "\U0010ffff")
        matched[self.by_id[first:last]] = True
        return matched


class SearchService:
    def __init__(self, repository: Repository, inventory: InventoryCache, workers: Workers):
        self.repository = repository
        self.inventory = inventory
        self.workers = workers  # the searches compute as pricing does: they share its places
        self._index: InventoryIndex | None = None
        self._index_lock = threading.Lock()

    def index(self, deadline: Deadline) -> InventoryIndex:
        """The index of the current snapshot, built on first use after each change."""
        snapshot = self.inventory.snapshot(deadline)
        index = self._index
        if index is not None and index.generation == snapshot.generation:
            return index
        deadline.acquire(self._index_lock, "the inventory index")
        try:
            if self._index is None or self._index.generation != snapshot.generation:
                deadline.check("before indexing the inventory")
                self._index = InventoryIndex(snapshot)
            return self._index
        finally:
            self._index_lock.release()

    def search_inventory(self, query: InventoryQuery, deadline: Deadline) -> CarPage:
        size = page_size_of(query.page_size)
        key, _, direction = query.order_by.strip().partition(" ")
        key = key or "car_id"
        descending = direction.strip() == "desc"
        if key not in INVENTORY_ORDERS or direction.strip() not in ("", "desc") or (key == "car_id" and descending):
            raise InvalidArgument('must be "car_id", or "price", "year" or "kilometers" optionally followed by '
                                  f'" desc", got {query.order_by[:MAX_TEXT]!r}', "order_by")
        after = read_token(query, 2)
        with self.workers.place(deadline):
            index = self.index(deadline)
            mask = index.mask(query.text, query.filters)
            rows = index.order(key, descending)
            if mask is not None:
                rows = rows[mask[rows]]
            start = 0 if after is None else self._start(index, rows, key, descending, after)
            page = rows[start:start + size]
            cars = [index.cars[r] for r in page]
            more = start + size < len(rows)
            token = make_token(query, [_json_value(index.values(key)[page[-1]]) if key != "car_id" else 0,
                                       cars[-1].car_id]) if more else ""
            return CarPage(cars=cars, next_page_token=token, total_size=len(rows), inventory_version=index.version)

    @staticmethod
    def _start(index: InventoryIndex, rows: numpy.ndarray, key: str, descending: bool, after: list) -> int:
        """The position in `rows` of the first car that sorts after the key (value, car_id)."""
        value, car_id = after
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not isinstance(car_id, str):
            raise InvalidArgument("is not a token of this query", "page_token")
        # car_id's position among the sorted ids, even when it has been sold since.
        at = bisect.bisect_left(index.sorted_ids, car_id.lower())
        threshold = at if at < len(index.sorted_ids) and index.sorted_ids[at] == car_id.lower() else at - 0.5
        ranks = index.id_rank[rows]
        if key == "car_id":
            later = ranks > threshold
        else:
            values = index.values(key)[rows]
            beyond = values < value if descending else values > value
            later = beyond | ((values == value) & (ranks > threshold))
        return int(numpy.argmax(later)) if later.any() else len(rows)

    def facets(self, text: str, filters: CarFilters, deadline: Deadline) -> Facets:
        with self.workers.place(deadline):
            index = self.index(deadline)
            mask = index.mask(text, filters)
            pick = (lambda column: column) if mask is None else (lambda column: column[mask])
            prices = pick(index.prices)
            years, counts = numpy.unique(pick(index.years), return_counts=True)
            quartiles = numpy.percentile(prices, [0, 25, 50, 75, 100]).tolist() if len(prices) else [0.0] * 5
            return Facets(
                total_cars=len(prices), brands=_counted(index.brands, pick(index.brand_codes)),
                years=[(int(y), int(c)) for y, c in zip(years[::-1], counts[::-1])], prices=tuple(quartiles),
                regions=_counted(index.regions, pick(index.region_codes)),
                colors=_counted(index.colors, pick(index.color_codes)),
                promotion_count=int(pick(index.promotion).sum()), inventory_version=index.version)

    def search_customers(self, query: CustomerQuery, deadline: Deadline) -> tuple[list[Customer], str]:
        size = page_size_of(query.page_size)
        order = query.order_by.strip() or "customer_id"
        if order not in CUSTOMER_ORDERS:
            raise InvalidArgument(f'must be "customer_id" or "customer_id desc", got {query.order_by[:MAX_TEXT]!r}',
                                  "order_by")
        after = read_token(query, 1)
        if after is not None and not isinstance(after[0], str):
            raise InvalidArgument("is not a token of this query", "page_token")
        customers = self.repository.search_customers(
            id_prefix=query.id_prefix, text=query.text, region=query.region, risk_profile=query.risk_profile,
            descending=order.endswith("desc"), after=None if after is None else after[0], limit=size + 1,
            deadline=deadline)
        more = len(customers) > size
        customers = customers[:size]
        return customers, make_token(query, [customers[-1].customer_id]) if more else ""


def _counted(names: list[str], codes: numpy.ndarray) -> list[tuple[str, int]]:
    counts = numpy.bincount(codes, minlength=len(names))
    return sorted(((names[k], int(n)) for k, n in enumerate(counts) if n), key=lambda item: (-item[1], item[0]))


def _json_value(value: Any) -> int | float:
    return value.item() if hasattr(value, "item") else value
