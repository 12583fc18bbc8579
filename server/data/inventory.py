"""The inventory snapshot and the caches in front of the database.

The snapshot holds every available car as compact columns sorted in prefilter order (year
desc, price desc, car_id asc), so a request matches its cars in memory with the compiled
kernel instead of fetching and parsing hundreds of rows; a request's consideration filters are
matched in the same pass, over the brand, colour and promotion columns (names as codes, each
filter's names as a table of the codes that pass). It is built once in full, then kept
fresh incrementally: the change feed hands it the rows changed since its version and
`InventorySnapshot.apply` builds the next snapshot from slices of the previous one (a few
milliseconds at 100,000 cars) while requests go on reading the old one. What stamps cannot
show (rows deleted by plain SQL, MySQL writes that committed late) is found by `reconcile`,
which compares per-bucket counts and checksums with the database and re-reads only the buckets
that differ. The TTL (default 4 h) stays as a safety net; InvalidateCache asks every process
for a full reload. Every snapshot installed, however it came, is told to the listener (the
change feed). In `sql` prefilter mode the database stays the judge of which cars qualify and
the id lists it returns are cached too, keyed by the snapshot's generation.
"""
from __future__ import annotations

import bisect
import itertools
import math
import sys
import threading
import time
from array import array
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from cachetools import TTLCache

from engine_ext import CarIds

from ..deadline import Deadline
from ..domain import Car, Customer
from .filters import Bounds, fold
from .repository import RECONCILE_BUCKETS, ChangeState, Repository, car_bucket, car_checksum

# The bound of a snapshot load, and of the wait for one, outside any call (the change feed,
# invalidation); calls bring their own deadline.
BACKGROUND_LOAD_SECONDS = 120.0
# Ranks order cars by car_id (ties between offers); spaced so that new ids fit in between.
RANK_SPACING = 1 << 16
# Names the rows of a snapshot for this process's life: prefilter results are cached under it.
# Never object ids, which a new snapshot may inherit from an expired one.
_GENERATIONS = itertools.count(1)

SnapshotListener = Callable[[int, tuple[str, ...] | None], None]  # (version, car ids changed; None: loaded in full)


def _order(car: Car) -> tuple:
    return (-car.year, -car.price, car.car_id)


@dataclass(frozen=True)
class Codes:
    """Each distinct name (region, brand, colour; (brand, model)) of a snapshot's cars -> its code
    in the columns. A search's words are matched against the distinct models, not the cars."""
    regions: dict[str, int]
    brands: dict[str, int]
    colors: dict[str, int]
    models: dict[tuple[str, str], int]

    def copy(self) -> "Codes":
        return Codes(dict(self.regions), dict(self.brands), dict(self.colors), dict(self.models))

    @staticmethod
    def code(codes: dict, name) -> int:
        return codes.setdefault(name, len(codes))

    @staticmethod
    def passing(codes: dict[str, int], wanted: frozenset[str] | None, excluded: frozenset[str] = frozenset()
                ) -> bytes:
        """By code, 1 for the names that pass (folded: among `wanted`, None: any; not `excluded`):
        a pass over the distinct names only. Codes are given in order, so they index it."""
        if wanted is None and not excluded:
            return b"\x01" * len(codes)
        return bytes((wanted is None or folded in wanted) and folded not in excluded for folded in map(fold, codes))


# The snapshot's columns, one value per car in prefilter order: name, array typecode, value of a car.
_COLUMNS = (
    ("years", "l", lambda car, ranks, codes: car.year),
    ("prices", "d", lambda car, ranks, codes: car.price),
    ("kilometers", "l", lambda car, ranks, codes: car.kilometers),
    ("regions", "l", lambda car, ranks, codes: Codes.code(codes.regions, car.region)),
    ("ranks", "l", lambda car, ranks, codes: ranks.rank_of[car.car_id]),
    ("brands", "l", lambda car, ranks, codes: Codes.code(codes.brands, car.brand)),
    ("colors", "l", lambda car, ranks, codes: Codes.code(codes.colors, car.color)),
    ("promotions", "b", lambda car, ranks, codes: int(car.has_promotion)),
    ("models", "l", lambda car, ranks, codes: Codes.code(codes.models, (car.brand, car.model))),
)


@dataclass(frozen=True)
class Selection:
    """The prefiltered cars of one request, as the engine takes them."""
    car_ids: Sequence[str]  # a CarIds of the snapshot's rows, or a list (the SQL prefilter)
    prices: array     # 'd', MXN
    ranks: array      # 'l', orders the cars by car_id
    rows: array       # 'l', rows of the snapshot
    inventory_version: int = 0  # of the snapshot they were taken from


class RankTable:
    """car_id -> rank, increasing with car_id, with gaps for ids that arrive later. Shared by the
    snapshots of one lineage (ids are never dropped; a sold car keeps its rank)."""

    def __init__(self, car_ids: Sequence[str]):
        self.ids = sorted(set(car_ids))
        self.ranks = [k * RANK_SPACING for k in range(len(self.ids))]
        self.rank_of = dict(zip(self.ids, self.ranks))

    def rank(self, car_id: str) -> int | None:
        """The rank of car_id, added if new; None when no gap is left (rebuild in full)."""
        rank = self.rank_of.get(car_id)
        if rank is not None:
            return rank
        at = bisect.bisect_left(self.ids, car_id)
        low = self.ranks[at - 1] if at else -RANK_SPACING
        high = self.ranks[at] if at < len(self.ranks) else (self.ranks[-1] if self.ranks else 0) + RANK_SPACING * 2
        if high - low < 2:
            return None
        rank = (low + high) // 2
        self.ids.insert(at, car_id)
        self.ranks.insert(at, rank)
        self.rank_of[car_id] = rank
        return rank


class RowIndex(Mapping):
    """car_id -> row of a snapshot, found by bisection on the car's sort key."""

    def __init__(self, snapshot: "InventorySnapshot"):
        self._snapshot = snapshot

    def __getitem__(self, car_id: str) -> int:
        return self._snapshot.position(self._snapshot.by_id[car_id])

    def __contains__(self, car_id: object) -> bool:
        return car_id in self._snapshot.by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._snapshot.car_ids)

    def __len__(self) -> int:
        return len(self._snapshot.car_ids)


class InventorySnapshot:
    """Immutable once built: requests read it without locks."""

    def __init__(self, cars: Sequence[Car], loaded_at: float, version: int = 0, reload_version: int = 0,
                 mark: Any = None, ranks: RankTable | None = None):
        cars = sorted(cars, key=_order)
        ranks = ranks or RankTable([c.car_id for c in cars])
        codes = Codes({}, {}, {}, {})
        self._set([c.car_id for c in cars],
                  tuple(array(typecode, (value(c, ranks, codes) for c in cars)) for _, typecode, value in _COLUMNS),
                  codes, {c.car_id: c for c in cars}, loaded_at, version, reload_version, mark, ranks,
                  next(_GENERATIONS))

    def _set(self, car_ids, columns, codes, by_id, loaded_at, version, reload_version, mark, rank_table,
             generation, checksums=None) -> None:
        self.car_ids = car_ids
        self.columns = columns
        (self.years, self.prices, self.kilometers, self.regions, self.ranks, self.brands, self.colors,
         self.promotions, self.models) = columns
        self.codes, self.region_codes, self.by_id = codes, codes.regions, by_id
        self.loaded_at, self.version, self.reload_version, self.mark = loaded_at, version, reload_version, mark
        self.rank_table = rank_table
        self.generation = generation  # shared only by snapshots holding the very same columns
        self._checksums = checksums
        self.row_of = RowIndex(self)

    def __len__(self) -> int:
        return len(self.car_ids)

    def position(self, car: Car) -> int:
        """The row at which `car` is, or would be, in prefilter order (bisect_left on the columns)."""
        years, prices, ids = self.years, self.prices, self.car_ids
        year, price, car_id = car.year, car.price, car.car_id
        low, high = 0, len(ids)
        while low < high:
            middle = (low + high) // 2
            y = years[middle]
            if y > year or (y == year and (prices[middle] > price
                                           or (prices[middle] == price and ids[middle] < car_id))):
                low = middle + 1
            else:
                high = middle
        return low

    def apply(self, changed: Sequence[Car], loaded_at: float, version: int, mark: Any
              ) -> tuple["InventorySnapshot", list[str]]:
        """The next snapshot with these rows applied (a car not available leaves it), and the ids
        that really changed. Built from slices of this one: O(n) copies in C, O(k log n) Python."""
        latest = {car.car_id: car for car in changed}
        ids = [car_id for car_id, car in latest.items()
               if self.by_id.get(car_id) != (car if car.available else None)]
        if not ids:
            return self._next(loaded_at, version, mark), []
        events: list[tuple] = []  # (row, 0, car): insert before row; (row, 1): drop row
        for car_id in ids:
            old = self.by_id.get(car_id)
            if old is not None:
                events.append((self.position(old), 1))
            car = latest[car_id]
            if car.available:
                if self.rank_table.rank(car_id) is None:  # no room between neighbouring ids: rebuild in full
                    survivors = [c for c in self.by_id.values() if c.car_id not in latest]
                    fresh = [c for c in latest.values() if c.available]
                    rebuilt = InventorySnapshot(survivors + fresh, loaded_at, version, self.reload_version, mark,
                                                RankTable([*self.rank_table.ids, *latest]))
                    return rebuilt, ids
                events.append((self.position(car), 0, car))
        events.sort(key=lambda e: (e[0], e[1], _order(e[2]) if e[1] == 0 else ()))
        codes = self.codes.copy()
        columns = self.columns
        out = tuple(array(column.typecode) for column in columns)
        views = tuple(memoryview(column).cast("B") for column in columns)
        out_ids: list[str] = []
        start = 0
        for event in events:
            row = event[0]
            if row > start:
                out_ids += self.car_ids[start:row]
                for target, view in zip(out, views):
                    target.frombytes(view[start * target.itemsize:row * target.itemsize])
            if event[1] == 1:
                start = row + 1
                continue
            car = event[2]
            start = max(start, row)
            out_ids.append(car.car_id)
            for target, (_, _, value) in zip(out, _COLUMNS):
                target.append(value(car, self.rank_table, codes))
        out_ids += self.car_ids[start:]
        for target, view in zip(out, views):
            target.frombytes(view[start * target.itemsize:])
        by_id = dict(self.by_id)
        for car_id in ids:
            car = latest[car_id]
            if car.available:
                by_id[car_id] = car
            else:
                by_id.pop(car_id, None)
        following = InventorySnapshot.__new__(InventorySnapshot)
        following._set(out_ids, out, codes, by_id, loaded_at, version, self.reload_version, mark,
                       self.rank_table, next(_GENERATIONS), self._carry_checksums(ids, latest))
        return following, ids

    def checksums(self) -> tuple[list[int], list[int]]:
        """(counts, checksums) of its cars per reconciliation bucket, as the database computes
        them: computed once (about 1 µs a car), then carried along by apply()."""
        if self._checksums is None:
            counts, sums = [0] * RECONCILE_BUCKETS, [0] * RECONCILE_BUCKETS
            for car in self.by_id.values():
                bucket = car_bucket(car.car_id)
                counts[bucket] += 1
                sums[bucket] += car_checksum(car)
            self._checksums = (counts, sums)  # the same values whichever thread computes them
        return self._checksums

    def _carry_checksums(self, ids: Sequence[str], latest: Mapping[str, Car]
                         ) -> tuple[list[int], list[int]] | None:
        """The checksums once the cars `ids` are replaced by their `latest` rows (None: not computed yet)."""
        if self._checksums is None:
            return None
        counts, sums = list(self._checksums[0]), list(self._checksums[1])
        for car_id in ids:
            bucket = car_bucket(car_id)
            for car, sign in ((self.by_id.get(car_id), -1), (latest[car_id], 1)):
                if car is not None and car.available:
                    counts[bucket] += sign
                    sums[bucket] += sign * car_checksum(car)
        return counts, sums

    def cars_in(self, buckets: set[int]) -> list[Car]:
        """Its cars in these reconciliation buckets."""
        return [car for car in self.by_id.values() if car_bucket(car.car_id) in buckets]

    def _next(self, loaded_at: float, version: int, mark: Any) -> "InventorySnapshot":
        """This snapshot's columns under a new version (nothing changed in them)."""
        following = InventorySnapshot.__new__(InventorySnapshot)
        following._set(self.car_ids, self.columns, self.codes, self.by_id, loaded_at, version, self.reload_version,
                       mark, self.rank_table, self.generation, self._checksums)
        return following

    def select(self, kernel, rows: Sequence[int]) -> Selection:
        rows = rows if isinstance(rows, array) else array("l", rows)
        return Selection(car_ids=CarIds(self.car_ids, rows), prices=kernel.take(self.prices, rows),
                         ranks=kernel.take(self.ranks, rows), rows=rows, inventory_version=self.version)

    def match(self, kernel, customer: Customer, same_region: bool, limit: int, bounds: Bounds | None = None
              ) -> Selection:
        """SPEC §2 against the snapshot, with the compiled (or twin) kernel; with filters, among
        the rows that pass them (one pass, stopping at the limit as without)."""
        # -1: any region; a region no car is in gets a code no row has.
        region = self.region_codes.get(customer.region, len(self.region_codes)) if same_region else -1
        price, year, km = float(customer.current_car_price), int(customer.current_car_year), int(customer.current_car_km)
        if bounds is None:
            rows = kernel.match_cars(self.years, self.prices, self.kilometers, self.regions, price, year, km, region,
                                     limit)
        else:
            rows = self._filtered(kernel, (price, year, km, region), bounds, limit)
        return self.select(kernel, rows)

    def mask(self, kernel, bounds: Bounds) -> np.ndarray:
        """Which rows pass the filters, whatever the customer (a bool per row)."""
        passing = np.zeros(len(self), dtype=bool)
        rows = self._filtered(kernel, (-math.inf, -sys.maxsize, sys.maxsize, -1), bounds, len(self))
        passing[np.frombuffer(rows, dtype=rows.typecode)] = True
        return passing

    def _filtered(self, kernel, trade_up: tuple, bounds: Bounds, limit: int) -> array:
        """The rows passing the trade-up conditions (min price, min year, max km, region code)
        and the filters, in order, at most `limit`. Names become tables of the codes that pass."""
        codes = self.codes
        return kernel.match_filtered(
            self.years, self.prices, self.kilometers, self.regions, self.brands, self.colors, self.promotions,
            *trade_up, _or(bounds.price_low, -math.inf), _or(bounds.price_high, math.inf),
            _or(bounds.year_low, -sys.maxsize), _or(bounds.year_high, sys.maxsize), _or(bounds.km_high, math.inf),
            codes.passing(codes.brands, bounds.brands, bounds.excluded_brands),
            codes.passing(codes.regions, bounds.regions), codes.passing(codes.colors, bounds.colors),
            bounds.promotion_only, limit)


def _or(value, unbounded):
    return unbounded if value is None else value


class InventoryCache:
    """Snapshot and prefilter-result caches with hit/miss counters; thread-safe."""

    def __init__(self, repository: Repository, ttl_seconds: float, prefilter_entries: int,
                 clock: Callable[[], float] = time.monotonic, overlap_seconds: float = 2.0):
        self.repository = repository
        self._clock = clock
        self.overlap_seconds = overlap_seconds
        self.ttl_seconds = ttl_seconds  # counted from the last full load: incremental updates do not renew it
        self._snapshot: InventorySnapshot | None = None
        self._prefilter: TTLCache = TTLCache(maxsize=prefilter_entries, ttl=ttl_seconds, timer=clock)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._recheck_until = 0.0  # re-read recent rows until then (writes that commit late)
        self._listener: SnapshotListener | None = None
        self.counts = {"inventory": [0, 0], "prefilter": [0, 0]}  # cache -> [hits, misses]

    def listen(self, listener: SnapshotListener) -> None:
        """Call listener(version, car ids changed or None) after each snapshot installed with a
        change: by the change feed, by reconciliation, or loaded on the request path (TTL)."""
        self._listener = listener

    def _get(self, name: str, cache: TTLCache, key):
        with self._lock:
            value = cache.get(key)
            self.counts[name][value is None] += 1
            return value

    def _load(self, deadline: Deadline | None) -> InventorySnapshot:
        state = self.repository.change_state(deadline)  # before the rows: a later change is re-read
        return InventorySnapshot(self.repository.available_cars(deadline), self._clock(), state.inventory_version,
                                 state.reload_version, state.latest_stamp)

    def _install(self, snapshot: InventorySnapshot, car_ids: Sequence[str] | None) -> None:
        """Make `snapshot` current; with _load_lock held, so that listeners hear changes in order."""
        with self._lock:
            self._snapshot = snapshot
            self._prefilter.clear()  # entries of older generations could never be hit again
        if self._listener is not None:
            self._listener(snapshot.version, None if car_ids is None else tuple(car_ids))

    def current(self) -> InventorySnapshot | None:
        """The cached snapshot unless expired, without loading one."""
        snapshot = self._snapshot
        if snapshot is not None and self._clock() - snapshot.loaded_at < self.ttl_seconds:
            return snapshot
        return None

    def snapshot(self, deadline: Deadline | None = None) -> InventorySnapshot:
        snapshot = self.current()
        with self._lock:
            self.counts["inventory"][snapshot is None] += 1
        if snapshot is not None:
            return snapshot
        # One load at a time (the others then find it cached), waited for within the deadline.
        deadline = deadline or Deadline.after(BACKGROUND_LOAD_SECONDS)
        deadline.acquire(self._load_lock, "the inventory snapshot")
        try:
            snapshot = self.current()
            if snapshot is None:
                snapshot = self._load(deadline)
                self._install(snapshot, None)
            return snapshot
        finally:
            self._load_lock.release()

    def refresh(self, state: ChangeState, deadline: Deadline | None = None) -> tuple[int, list[str] | None] | None:
        """Bring the cached snapshot up to `state` (the change feed calls this on each tick):
        a full reload when one was requested or the TTL ran out (here, so that requests never wait
        for it while the feed runs), else only the rows stamped since the snapshot.
        Returns (new version, changed car ids; None after a full reload), or None if unchanged."""
        with self._load_lock:
            if self._snapshot is None:
                return None  # loaded on first use
            snapshot = self.current()
            if snapshot is None or state.reload_version != snapshot.reload_version:
                snapshot = self._load(None)  # seconds at 100,000 cars: bounded by the database timeouts
                self._install(snapshot, None)
                return snapshot.version, None
            now = self._clock()
            moved = state.latest_stamp != snapshot.mark or state.inventory_version != snapshot.version
            if not moved and now >= self._recheck_until:
                return None
            if moved:
                self._recheck_until = now + self.overlap_seconds
            changed, newest = self.repository.changed_cars(snapshot.mark, self.overlap_seconds, deadline)
            mark = snapshot.mark if newest is None or (snapshot.mark is not None and newest <= snapshot.mark) \
                else newest
            following, ids = snapshot.apply(changed, snapshot.loaded_at, state.inventory_version, mark)
            if not ids and following.version != snapshot.version:
                # The version moved with no stamped row to show for it: another process reconciled
                # (rows deleted or committed late). Find the same differences under that version.
                following, ids = self._reconciled(following, deadline)
            if ids or following.version != snapshot.version:
                self._install(following, ids)
                return following.version, ids
            with self._lock:  # same rows, same version: keep the prefilter cache
                if self._snapshot is snapshot:
                    self._snapshot = following
            return None

    def reconcile(self, deadline: Deadline | None = None) -> tuple[int, list[str]] | None:
        """Compare the snapshot with the database and apply what the change feed missed (the
        feed calls this every cache.reconcile_seconds). The inventory version moves once for it,
        in whichever process finds it first. Returns (new version, car ids) or None if in step."""
        with self._load_lock:
            snapshot = self.current()
            if snapshot is None:
                return None
            following, ids = self._reconciled(snapshot, deadline)
            if not ids:
                return None
            version = self.repository.move_inventory_version(snapshot.version, deadline)
            following = following._next(following.loaded_at, version, following.mark)
            self._install(following, ids)
            return version, ids

    def _reconciled(self, snapshot: InventorySnapshot, deadline: Deadline | None
                    ) -> tuple[InventorySnapshot, list[str]]:
        """`snapshot` with the buckets it disagrees with the database on re-read (same version),
        and the car ids that changed: one whole-inventory checksum when they agree."""
        counts, sums = snapshot.checksums()
        if self.repository.inventory_checksum(deadline) == (sum(counts), sum(sums)):
            return snapshot, []
        stored = self.repository.bucket_checksums(deadline)
        differ = {b for b in range(RECONCILE_BUCKETS) if stored.get(b, (0, 0)) != (counts[b], sums[b])}
        fresh = self.repository.cars_in_buckets(sorted(differ), deadline)
        present = {car.car_id for car in fresh}
        gone = [replace(car, available=False) for car in snapshot.cars_in(differ) if car.car_id not in present]
        return snapshot.apply(fresh + gone, snapshot.loaded_at, snapshot.version, snapshot.mark)

    def prefilter_sql(self, kernel, customer: Customer, same_region: bool, limit: int,
                      deadline: Deadline | None = None, bounds: Bounds | None = None) -> Selection:
        """SPEC §2 in the database (ids only), the cars' details from the snapshot. The cache key
        holds the filters bound to the customer (`bounds`, canonical: equal filters, equal key)."""
        snapshot = self.snapshot(deadline)
        region = customer.region if same_region else None
        key = (float(customer.current_car_price), int(customer.current_car_year), int(customer.current_car_km),
               region, limit, bounds, snapshot.generation)
        rows = self._get("prefilter", self._prefilter, key)
        if rows is None:
            ids = self.repository.prefilter_ids(*key[:6], deadline=deadline)
            # A car sold after the snapshot was taken is not priced until the snapshot catches up.
            row_of = snapshot.row_of
            rows = array("l", (row_of[i] for i in ids if i in row_of))
            with self._lock:
                self._prefilter[key] = rows
        return snapshot.select(kernel, rows)

    def invalidate(self) -> int:
        """Drop this process's caches (the next request reloads); see ChangeFeed.invalidate for all."""
        with self._lock:
            removed = (self._snapshot is not None) + len(self._prefilter)
            self._snapshot = None
            self._prefilter.clear()
            return removed

    @property
    def hits(self) -> int:
        return sum(hits for hits, _ in self.counts.values())

    @property
    def misses(self) -> int:
        return sum(misses for _, misses in self.counts.values())

    def status(self) -> dict:
        snapshot = self.current()
        with self._lock:
            counts = {name: tuple(pair) for name, pair in self.counts.items()}
            prefilter_entries = len(self._prefilter)
        hits, misses = sum(h for h, _ in counts.values()), sum(m for _, m in counts.values())
        return {"inventory_cars": len(snapshot) if snapshot else 0,
                "inventory_age_seconds": self._clock() - snapshot.loaded_at if snapshot else 0.0,
                "inventory_version": snapshot.version if snapshot else 0,
                "prefilter_cache_entries": prefilter_entries, "cache_hits": hits, "cache_misses": misses,
                "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0, "cache_counts": counts}
