"""Inventory and customer search: the pages and facets of the screens that pick a car or a customer.

Cars are answered from the inventory snapshot the offers are priced from, through an index of
each snapshot generation (numpy views of its columns, one sort order per sort key, the ids in
order; each part built on first use), so a page or the facets cost a few vectorized passes
over the cars. Customers are read from the
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
from functools import cached_property
from typing import Any, Callable

import numpy

from ..data.filters import NO_FILTERS, ConsiderationFilters, fold
from ..data.inventory import InventoryCache, InventorySnapshot
from ..data.repository import Repository
from ..deadline import Deadline
from ..domain import Car, Customer
from ..errors import Violation, Violations
from .workers import Workers

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_QUERY_WORDS = 10
MAX_TEXT = 64
INVENTORY_ORDERS = ("car_id", "price", "year", "kilometers")  # each also " desc" but car_id
CUSTOMER_ORDERS = ("customer_id", "customer_id desc")
# The snapshot's columns a search reads (InventorySnapshot attributes, one value per car).
COLUMNS = ("years", "prices", "kilometers", "ranks", "brands", "regions", "colors", "promotions", "models")


@dataclass(frozen=True)
class InventoryQuery:
    text: str = ""
    filters: ConsiderationFilters = NO_FILTERS
    order_by: str = ""
    page_size: int = 0
    page_token: str = ""
    # found while reading the request: reported with the service's (not part of the query a token names)
    violations: tuple[Violation, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class CustomerQuery:
    id_prefix: str = ""
    text: str = ""
    region: str = ""
    risk_profile: str = ""
    order_by: str = ""
    page_size: int = 0
    page_token: str = ""
    violations: tuple[Violation, ...] = field(default=(), repr=False, compare=False)  # as InventoryQuery's


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
def paging(query: Any, arity: int, valid_key: Callable[[list], bool], order_error: str) -> tuple[int, list | None]:
    """(the page size, the key after which the page starts) of a query, raising every wrong field
    of its request at once: those its reading found, order_by's (`order_error`, if not empty), the
    size's and the token's."""
    found = Violations()
    for each in query.violations:
        found.add(each.field, each.description)
    if order_error:
        found.add("order_by", order_error)
    size = page_size_of(query.page_size, found)
    after = read_token(query, arity, valid_key, found)
    found.check()
    return size, after


def page_size_of(size: int, found: Violations) -> int:
    """AIP-158: 0 is the default, above the maximum is the maximum, negative is an error."""
    if size < 0:
        found.add("page_size", f"must be >= 0, got {size}")
    return min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def query_digest(query: Any) -> str:
    """Names a query whatever its paging: a token is valid only for the query that produced it."""
    return hashlib.sha256(repr(replace(query, page_size=0, page_token="")).encode()).hexdigest()[:16]


def make_token(query: Any, key: list) -> str:
    data = json.dumps([query_digest(query), *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def read_token(query: Any, arity: int, valid_key: Callable[[list], bool], found: Violations) -> list | None:
    """The key after which the page starts (None: the first page, or a wrong token, noted in `found`)."""
    if not query.page_token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(query.page_token + "=" * (-len(query.page_token) % 4)))
        valid = isinstance(data, list) and len(data) == arity + 1 and data[0] == query_digest(query)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        found.add("page_token", "is not a token of this query (give the next_page_token of the same query)")
        return None
    if not valid_key(data[1:]):  # the right query's digest, but a key no page of it ends with
        found.add("page_token", "is not a token of this query")
        return None
    return data[1:]


# --- the inventory index -------------------------------------------------------------------------
class InventoryIndex:
    """What a search needs of one snapshot beyond its columns: the distinct models lower-cased (the
    free text, through the models column), the rows by car_id (the id prefix, the tie-break) and
    one order per sort key.
    Each part is computed on first use, so a change of the inventory costs a search only the
    parts it needs (a plain page: its sort order, a few milliseconds at 100,000 cars)."""

    def __init__(self, snapshot: InventorySnapshot, kernel):
        self.snapshot = snapshot
        self.kernel = kernel  # the filters run in it (InventorySnapshot.mask)
        self.generation = snapshot.generation
        self.version = snapshot.version
        # numpy views of the snapshot's columns (no copy), by name
        self.columns = columns = {name: numpy.frombuffer(column, dtype=column.typecode) for name, column in (
            (name, getattr(snapshot, name)) for name in COLUMNS)}
        self.id_rank = columns["ranks"]  # increases with car_id
        self.sort_values = {"price": columns["prices"], "year": columns["years"],
                            "kilometers": columns["kilometers"], "car_id": self.id_rank}
        self._orders: dict[tuple[str, bool], numpy.ndarray] = {}
        self._lock = threading.Lock()

    @cached_property
    def by_id(self) -> numpy.ndarray:
        return numpy.argsort(self.id_rank, kind="stable")

    @cached_property
    def sorted_ids(self) -> list[str]:
        return [self.snapshot.car_ids[r] for r in self.by_id]

    @cached_property
    def folded_ids(self) -> tuple[list[str], numpy.ndarray]:
        """(the ids lower-cased, sorted; their rows): the same order as by_id unless case reorders them."""
        folded = [car_id.lower() for car_id in self.sorted_ids]
        if all(a <= b for a, b in zip(folded, folded[1:])):
            return folded, self.by_id
        rows = sorted(range(len(folded)), key=folded.__getitem__)
        return [folded[r] for r in rows], self.by_id[numpy.array(rows, dtype=numpy.int64)]

    @cached_property
    def models(self) -> list[tuple[str, str]]:
        """Each distinct (brand, model) of the snapshot, lower-cased, by its code in the models column."""
        return [(brand.lower(), model.lower()) for brand, model in self.snapshot.codes.models]

    def order(self, key: str, descending: bool) -> numpy.ndarray:
        """Rows sorted by `key` (descending if asked), ties by car_id ascending; computed once."""
        with self._lock:
            rows = self._orders.get((key, descending))
            if rows is None:
                values = self.sort_values[key]
                rows = self.by_id if key == "car_id" else numpy.lexsort(
                    (self.id_rank, -values if descending else values))
                self._orders[key, descending] = rows
            return rows

    def mask(self, text: str, filters: ConsiderationFilters) -> numpy.ndarray | None:
        """The rows matching every word and the filters (None: every row)."""
        bounds = filters.resolve(None)
        mask = None if bounds is None else self.snapshot.mask(self.kernel, bounds)
        for word in text.lower().split():
            mask = self._word(word) if mask is None else mask & self._word(word)
        return mask

    def _word(self, word: str) -> numpy.ndarray:
        """Rows whose id starts with `word` or whose brand or model contains it (case folded)."""
        wanted = numpy.array([word in brand or word in model for brand, model in self.models], dtype=bool)
        matched = wanted[self.columns["models"]]  # one lookup per car: a pass over the distinct models only
        folded, rows = self.folded_ids
        first = bisect.bisect_left(folded, word)
        last = bisect.bisect_left(folded, word + "\U0010ffff")
        matched[rows[first:last]] = True
        return matched

    def rank_after(self, car_id: str) -> int:
        """The id rank after which the cars following `car_id` start, even if it has been sold since."""
        at = bisect.bisect_right(self.sorted_ids, car_id)
        return int(self.id_rank[self.by_id[at - 1]]) if at else -1


class SearchService:
    def __init__(self, repository: Repository, inventory: InventoryCache, workers: Workers, kernel):
        self.repository = repository
        self.inventory = inventory
        self.kernel = kernel  # compiled or twin, as the engine's
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
                self._index = InventoryIndex(snapshot, self.kernel)
            return self._index
        finally:
            self._index_lock.release()

    def search_inventory(self, query: InventoryQuery, deadline: Deadline) -> CarPage:
        key, _, direction = query.order_by.strip().partition(" ")
        key = key or "car_id"
        descending = direction.strip() == "desc"
        right_order = key in INVENTORY_ORDERS and direction.strip() in ("", "desc") and not (
            key == "car_id" and descending)
        size, after = paging(query, 2, _car_key, "" if right_order else (
            'must be "car_id", or "price", "year" or "kilometers" optionally followed by '
            f'" desc", got {query.order_by[:MAX_TEXT]!r}'))
        with self.workers.place(deadline):
            index = self.index(deadline)
            mask = index.mask(query.text, query.filters)
            rows = index.order(key, descending)
            if mask is not None:
                rows = rows[mask[rows]]
            start = 0 if after is None else self._start(index, rows, key, descending, after)
            page = rows[start:start + size]
            cars = [index.snapshot.by_id[index.snapshot.car_ids[r]] for r in page]
            more = start + size < len(rows)
            token = make_token(query, [index.sort_values[key][page[-1]].item(), cars[-1].car_id]) if more else ""
            return CarPage(cars=cars, next_page_token=token, total_size=len(rows), inventory_version=index.version)

    @staticmethod
    def _start(index: InventoryIndex, rows: numpy.ndarray, key: str, descending: bool, after: list) -> int:
        """The position in `rows` of the first car that sorts after the key (value, car_id)."""
        value, car_id = after
        ranks = index.id_rank[rows]
        rank = index.rank_after(car_id)
        if key == "car_id":
            later = ranks > rank
        else:
            values = index.sort_values[key][rows]
            later = (values < value if descending else values > value) | ((values == value) & (ranks > rank))
        return int(numpy.argmax(later)) if later.any() else len(rows)

    def facets(self, text: str, filters: ConsiderationFilters, deadline: Deadline) -> Facets:
        with self.workers.place(deadline):
            index = self.index(deadline)
            snapshot = index.snapshot
            mask = index.mask(text, filters)
            columns = index.columns
            pick = (lambda name: columns[name]) if mask is None else (lambda name: columns[name][mask])  # noqa: E731
            prices, years = pick("prices"), pick("years")
            quartiles = numpy.percentile(prices, [0, 25, 50, 75, 100]).tolist() if len(prices) else [0.0] * 5
            oldest = int(years.min()) if len(years) else 0
            year_counts = numpy.bincount(years - oldest) if len(years) else numpy.zeros(0, dtype=numpy.int64)
            return Facets(
                total_cars=len(prices), brands=_counted(snapshot.codes.brands, pick("brands")),
                years=[(oldest + k, int(year_counts[k])) for k in numpy.flatnonzero(year_counts)[::-1]],
                prices=tuple(quartiles), regions=_counted(snapshot.codes.regions, pick("regions")),
                colors=_counted(snapshot.codes.colors, pick("colors")),
                promotion_count=int(numpy.count_nonzero(pick("promotions"))), inventory_version=index.version)

    def search_customers(self, query: CustomerQuery, deadline: Deadline) -> tuple[list[Customer], str]:
        order = query.order_by.strip() or "customer_id"
        size, after = paging(query, 1, _customer_key, "" if order in CUSTOMER_ORDERS else (
            f'must be "customer_id" or "customer_id desc", got {query.order_by[:MAX_TEXT]!r}'))
        customers = self.repository.search_customers(
            id_prefix=query.id_prefix, text=query.text, region=query.region, risk_profile=query.risk_profile,
            descending=order.endswith("desc"), after=None if after is None else after[0], limit=size + 1,
            deadline=deadline)
        more = len(customers) > size
        customers = customers[:size]
        return customers, make_token(query, [customers[-1].customer_id]) if more else ""


def _car_key(key: list) -> bool:
    """(a sort value, a car id), as a page of cars ends with."""
    value, car_id = key
    return isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(car_id, str)


def _customer_key(key: list) -> bool:
    """A customer id, as stored."""
    return isinstance(key[0], str) and key[0].isascii() and key[0].isprintable() and len(key[0]) <= MAX_TEXT


def _counted(codes: dict[str, int], column: numpy.ndarray) -> list[tuple[str, int]]:
    """(name, cars) of the names in a column of codes, most cars first, then by name. Names count
    as the filters match them, case ignored ("Mazda" and "MAZDA" are one entry, shown as the
    spelling most of its cars have)."""
    counts = numpy.bincount(column, minlength=len(codes))
    spellings: dict[str, list[tuple[int, str]]] = {}
    for name, code in codes.items():
        if counts[code]:
            spellings.setdefault(fold(name), []).append((-int(counts[code]), name))
    return sorted(((min(named)[1], -sum(count for count, _ in named)) for named in spellings.values()),
                  key=lambda item: (-item[1], item[0]))
