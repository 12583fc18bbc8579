"""The inventory snapshot and the caches in front of the database.

The snapshot holds every available car as compact columns sorted in prefilter order (year
desc, price desc, car_id asc), so a request matches its cars in memory with the compiled
kernel instead of fetching and parsing hundreds of rows. It lives in a TTLCache (default 4 h)
and is rebuilt on expiry or invalidation. In `sql` prefilter mode the database stays the judge
of which cars qualify and the id lists it returns are cached too.
"""
from __future__ import annotations

import threading
import time
from array import array
from dataclasses import dataclass
from typing import Callable, Sequence

from cachetools import TTLCache

from ..domain import Car, Customer
from ..errors import DeadlineExceeded
from .repository import Repository


@dataclass(frozen=True)
class Selection:
    """The prefiltered cars of one request, as the engine takes them."""
    car_ids: list[str]
    prices: array     # 'd', MXN
    ranks: array      # 'l', rank of each car by car_id
    rows: array       # 'l', rows of the snapshot


class InventorySnapshot:
    def __init__(self, cars: Sequence[Car], loaded_at: float):
        cars = sorted(cars, key=lambda c: (-c.year, -c.price, c.car_id))
        self.cars = cars
        self.loaded_at = loaded_at
        self.car_ids = [c.car_id for c in cars]
        self.years = array("l", (c.year for c in cars))
        self.prices = array("d", (c.price for c in cars))
        self.kilometers = array("l", (c.kilometers for c in cars))
        self.region_codes: dict[str, int] = {}
        self.regions = array("l", (self.region_codes.setdefault(c.region, len(self.region_codes)) for c in cars))
        self.ranks = array("l", bytes(array("l").itemsize * len(cars)))
        for rank, row in enumerate(sorted(range(len(cars)), key=self.car_ids.__getitem__)):
            self.ranks[row] = rank
        self.row_of = {car_id: row for row, car_id in enumerate(self.car_ids)}

    def __len__(self) -> int:
        return len(self.cars)

    def select(self, kernel, rows: Sequence[int]) -> Selection:
        rows = rows if isinstance(rows, array) else array("l", rows)
        ids = self.car_ids
        return Selection(car_ids=[ids[r] for r in rows], prices=kernel.take(self.prices, rows),
                         ranks=kernel.take(self.ranks, rows), rows=rows)

    def match(self, kernel, customer: Customer, same_region: bool, limit: int) -> Selection:
        """SPEC §2 against the snapshot, with the compiled (or twin) kernel."""
        # -1: any region; a region no car is in gets a code no row has.
        region = self.region_codes.get(customer.region, len(self.region_codes)) if same_region else -1
        rows = kernel.match_cars(self.years, self.prices, self.kilometers, self.regions,
                                 float(customer.current_car_price), int(customer.current_car_year),
                                 int(customer.current_car_km), region, limit)
        return self.select(kernel, rows)


class InventoryCache:
    """Snapshot and prefilter-result caches with hit/miss counters; thread-safe."""

    def __init__(self, repository: Repository, ttl_seconds: float, prefilter_entries: int,
                 clock: Callable[[], float] = time.monotonic):
        self.repository = repository
        self._clock = clock
        self._snapshots: TTLCache = TTLCache(maxsize=1, ttl=ttl_seconds, timer=clock)
        self._prefilter: TTLCache = TTLCache(maxsize=prefilter_entries, ttl=ttl_seconds, timer=clock)
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.counts = {"inventory": [0, 0], "prefilter": [0, 0]}  # cache -> [hits, misses]

    def _get(self, name: str, cache: TTLCache, key):
        with self._lock:
            value = cache.get(key)
            self.counts[name][value is None] += 1
            return value

    def snapshot(self, timeout: float | None = None) -> InventorySnapshot:
        snapshot = self._get("inventory", self._snapshots, "inventory")
        if snapshot is not None:
            return snapshot
        # One load at a time (the others then find it cached), waited for within the deadline.
        started = time.monotonic()
        if not self._load_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            raise DeadlineExceeded("deadline exceeded waiting for the inventory snapshot")
        try:
            with self._lock:
                snapshot = self._snapshots.get("inventory")
            if snapshot is None:
                left = None if timeout is None else timeout - (time.monotonic() - started)
                snapshot = InventorySnapshot(self.repository.available_cars(left), self._clock())
                with self._lock:
                    self._snapshots["inventory"] = snapshot
            return snapshot
        finally:
            self._load_lock.release()

    def prefilter_sql(self, kernel, customer: Customer, same_region: bool, limit: int,
                      timeout: float | None = None) -> Selection:
        """SPEC §2 in the database (ids only), the cars' details from the snapshot."""
        snapshot = self.snapshot(timeout)
        region = customer.region if same_region else None
        key = (float(customer.current_car_price), int(customer.current_car_year), int(customer.current_car_km),
               region, limit, id(snapshot))
        rows = self._get("prefilter", self._prefilter, key)
        if rows is None:
            ids = self.repository.prefilter_ids(*key[:5], timeout=timeout)
            # A car sold after the snapshot was taken is not priced until the snapshot reloads.
            rows = array("l", (snapshot.row_of[i] for i in ids if i in snapshot.row_of))
            with self._lock:
                self._prefilter[key] = rows
        return snapshot.select(kernel, rows)

    def invalidate(self) -> int:
        with self._lock:
            removed = len(self._snapshots) + len(self._prefilter)
            self._snapshots.clear()
            self._prefilter.clear()
            return removed

    @property
    def hits(self) -> int:
        return sum(hits for hits, _ in self.counts.values())

    @property
    def misses(self) -> int:
        return sum(misses for _, misses in self.counts.values())

    def status(self) -> dict:
        with self._lock:
            snapshot = self._snapshots.get("inventory")
            counts = {name: tuple(pair) for name, pair in self.counts.items()}
            prefilter_entries = len(self._prefilter)
        hits, misses = sum(h for h, _ in counts.values()), sum(m for _, m in counts.values())
        return {"inventory_cars": len(snapshot) if snapshot else 0,
                "inventory_age_seconds": self._clock() - snapshot.loaded_at if snapshot else 0.0,
                "prefilter_cache_entries": prefilter_entries, "cache_hits": hits, "cache_misses": misses,
                "cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0, "cache_counts": counts}
