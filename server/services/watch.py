"""Live offers (WatchOffers): a customer's answer, then what changes in it, as the fleet changes.

Watchers of the same customer and request share one `Group`: one pricing per change, whatever
the number of streams. One dispatcher thread per process hears the change feed (the same one
that keeps the caches fresh, so it works on every process of every replica, by polling or by
Redis push) and re-prices only the groups a change can concern:
- a car sold, added or repriced: the groups whose prefilter its old or new row passes
  (price > P, year >= Y, km < K, region, the group's consideration filters, and before the
  last car when the limit cut the selection), found through an index sorted by P;
- a configuration version: every group;
- the customer's stored record: re-read for all watched customers in one query every
  `server.watch_customer_poll_seconds` (customers carry no version of their own).
A group whose new answer differs from the last one (offers, tiers, counts) pushes one `Update`
to each of its watchers; nothing is pushed otherwise. Each watcher holds at most
`server.watch_queue_messages` updates: one that falls behind drops them and is sent the whole
current answer once (RESYNC) instead. Streams wait on a Condition: an idle watcher costs no CPU.
"""
from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from engine_ext import Offer

from ..data.filters import Bounds
from ..data.inventory import InventorySnapshot, _order as prefilter_order
from ..domain import Car, Customer
from ..errors import ResourceExhausted, ServiceError, Unavailable
from .changefeed import CONFIG, Change, ChangeFeed
from ..deadline import Deadline
from .offers import CustomerRef, OfferQuery, OfferResult, OfferService

log = logging.getLogger("tradeup.watch")

INITIAL, INVENTORY, CONFIGURATION, CUSTOMER, RESYNC, ENDING = (
    "initial", "inventory", "configuration", "customer", "resync", "ending")

OfferKey = tuple[str, int]  # (car_id, term)
MAX_WAIT_SECONDS = 300.0


@dataclass(frozen=True)
class Answer:
    """One priced answer of a group. Only the engine's compact columns are kept: the offers as
    objects are built while comparing two answers, so a thousand groups hold no offer objects."""
    result: OfferResult
    last_key: tuple | None = None  # prefilter order of the last car selected, when the limit cut it

    def slots(self) -> dict[OfferKey, int]:
        """The engine slot of each offer returned (after max_offers), by (car, term)."""
        offers = self.result.offers
        terms, ids = offers.plan.columns.terms, offers.car_ids
        n = len(terms)
        return {(ids[slot // n], terms[slot % n]): slot for slot in offers.order[:self.result.returned]}

    def offers(self) -> dict[OfferKey, Offer]:
        at = self.result.offers.at_slot
        return {key: at(slot) for key, slot in self.slots().items()}

    def totals(self) -> tuple:
        """What else a client sees change: counts by tier, rejections, cars evaluated."""
        offers = self.result.offers
        return (len(offers), offers.cars_evaluated, tuple(sorted(offers.tier_counts.items())),
                tuple(sorted(offers.rejected.items())))


@dataclass
class Update:
    """One message of a stream: the whole answer (INITIAL, RESYNC) or the changes against the
    previous one. `encoded` caches the wire form: the watchers of a group share one encoding."""
    reason: str
    answer: Answer
    full: bool = False
    added: list[Offer] = field(default_factory=list)
    removed: list[OfferKey] = field(default_factory=list)
    changed: list[Offer] = field(default_factory=list)
    encoded: Any = None

    @classmethod
    def between(cls, reason: str, old: Answer, new: Answer, cars: set[str] | None = None) -> "Update | None":
        """The changes from old to new; None when a client would see none. `cars`: the only cars
        that changed, if nothing else did (then only their offers can have new amounts)."""
        before, after = old.slots(), new.slots()
        was, now = old.result.offers.at_slot, new.result.offers.at_slot
        same_inputs = cars is not None and old.result.config_version == new.result.config_version \
            and old.result.customer == new.result.customer
        added = [now(slot) for key, slot in after.items() if key not in before]
        removed = [key for key in before if key not in after]
        changed = [offer for key, slot in after.items()
                   if key in before and (not same_inputs or key[0] in cars)
                   and (offer := now(slot)) != was(before[key])]
        if not (added or removed or changed) and old.totals() == new.totals():
            return None
        return cls(reason, new, added=added, removed=removed, changed=changed)


class Watcher:
    """One stream's mailbox: bounded; falls back to one full answer when the reader lags."""

    def __init__(self, group: "Group", limit: int):
        self.group = group
        self.limit = limit
        self.initial: Update | None = None
        self._cond = threading.Condition()
        self._pending: deque[Update] = deque()
        self._resync = False
        self._ended: Update | ServiceError | None = None  # ENDING update or the error that ends it
        self._cancelled = False

    def push(self, update: Update) -> None:
        """Called with the group's lock held, so pushes follow the group's answers in order."""
        with self._cond:
            if len(self._pending) >= self.limit:
                self._pending.clear()
                self._resync = True
            elif not self._resync:
                self._pending.append(update)
            self._cond.notify()

    def end(self, why: Update | ServiceError) -> None:
        with self._cond:
            if self._ended is None:
                self._ended = why
            self._cond.notify()

    def cancel(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify()

    def next(self, timeout: float | None) -> Update | None:
        """The next message to send; None when the wait timed out or the call was cancelled."""
        with self._cond:
            if not (self._pending or self._resync or self._ended or self._cancelled):
                self._cond.wait(timeout)
            if self._cancelled:
                return None
            if isinstance(self._ended, ServiceError):
                raise self._ended
            if self._ended is not None:
                return self._ended
            if self._pending:
                return self._pending.popleft()
            if not self._resync:
                return None
        with self.group.lock, self._cond:  # no push in between: later ones follow this answer
            self._pending.clear()
            self._resync = False
            return Update(RESYNC, self.group.answer, full=True)


class Group:
    """The watchers of one (customer, request), with the answer they all last received."""

    def __init__(self, key: tuple, query: OfferQuery, answer: Answer):
        self.key = key
        self.query = query
        self.answer = answer
        self.lock = threading.Lock()
        self.watchers: set[Watcher] = set()
        self._bounds: tuple[Customer, Bounds | None] | None = None  # the filters bound to the customer

    @property
    def bounds(self) -> Bounds | None:
        customer = self.customer
        if self._bounds is None or self._bounds[0] is not customer:
            # Resolvable: the answer was priced with this customer and these filters.
            self._bounds = (customer, self.query.filters.resolve(customer))
        return self._bounds[1]

    @property
    def customer(self) -> Customer:
        return self.answer.result.customer

    @property
    def stored(self) -> bool:
        return self.query.customer.profile is None

    def passes(self, car: Car) -> bool:
        """Whether this car row is (or would be) among the group's prefiltered cars (SPEC §2): it
        meets the conditions and, when the limit cut the selection, sorts before its last car."""
        c = self.customer
        if not (car.price > c.current_car_price and car.year >= c.current_car_year
                and car.kilometers < c.current_car_km and (not self.query.same_region or car.region == c.region)
                and (self.bounds is None or self.bounds.passes(car))):
            return False
        last = self.answer.last_key
        return last is None or prefilter_order(car) <= last

    def publish(self, reason: str, answer: Answer, cars: set[str] | None = None) -> int:
        """Make `answer` the group's; push the changes to its watchers. Returns watchers reached."""
        with self.lock:
            update = Update.between(reason, self.answer, answer, cars)
            self.answer = answer
            if update is None:
                return 0
            for watcher in self.watchers:
                watcher.push(update)
            return len(self.watchers)


def group_key(query: OfferQuery) -> tuple:
    return (query.customer, tuple(sorted(query.overrides.items())), query.terms, tuple(sorted(set(query.tiers))),
            query.max_offers, query.same_region, query.max_cars, query.filters)


class WatchService:
    def __init__(self, offers: OfferService, feed: ChangeFeed, max_watchers: int, queue_limit: int,
                 customer_poll_seconds: float, reprice_seconds: float):
        """`reprice_seconds`: the deadline of each re-pricing."""
        self.offers = offers
        self.reprice_seconds = reprice_seconds
        self.feed = feed
        self.max_watchers = max_watchers
        self.queue_limit = queue_limit
        self.customer_poll_seconds = customer_poll_seconds
        self._groups: dict[tuple, Group] = {}
        self._watchers = 0
        self._lock = threading.Lock()
        self._index: tuple[list[float], list[Group]] | None = None  # groups by prefilter price bound
        self._events: queue.Queue = queue.Queue()
        self._seen: InventorySnapshot | None = None  # the snapshot the last inventory event left
        self._closing = False
        self._unsubscribe = None
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)

    # --- streams ------------------------------------------------------------------------------
    def open(self, query: OfferQuery, deadline: Deadline) -> Watcher:
        """A watcher with its INITIAL update; raises as GenerateOffers would for a bad request."""
        key = group_key(query)
        with self._lock:
            if self._closing:
                raise Unavailable("the server is shutting down")
            if self._watchers >= self.max_watchers:
                raise ResourceExhausted(f"this process already serves {self.max_watchers} WatchOffers streams")
            self._watchers += 1
        try:
            with self._lock:
                watcher = self._join(self._groups.get(key))
            if watcher is None:
                result = self.offers.generate(query, deadline)  # validates; outside the lock
                with self._lock:
                    group = self._groups.get(key)
                    if group is None:
                        group = self._groups[key] = Group(key, query, self._answer(query, result))
                        self._index = None
                        self._catch_up(group)
                    watcher = self._join(group)
            return watcher
        except BaseException:
            with self._lock:
                self._watchers -= 1
            raise

    def _answer(self, query: OfferQuery, result: OfferResult) -> Answer:
        limit = query.max_cars or self.offers.settings.current.prefilter.default_limit
        car_ids = result.offers.car_ids
        snapshot = self.offers.inventory.current()
        last = snapshot.by_id.get(car_ids[-1]) if snapshot is not None and len(car_ids) >= limit else None
        return Answer(result, prefilter_order(last) if last is not None else None)

    def _join(self, group: Group | None) -> Watcher | None:
        if group is None:
            return None
        watcher = Watcher(group, self.queue_limit)
        with group.lock:
            group.watchers.add(watcher)
            watcher.initial = Update(INITIAL, group.answer, full=True)
        return watcher

    def _catch_up(self, group: Group) -> None:
        """A change applied while the group's first answer was priced reached no one: re-price."""
        result = group.answer.result
        snapshot = self.offers.inventory.current()
        if result.config_version != self.offers.settings.current.version:
            self._events.put(("group", group, CONFIGURATION))
        elif snapshot is not None and result.inventory_version != snapshot.version:
            self._events.put(("group", group, INVENTORY))

    def close(self, watcher: Watcher) -> None:
        group = watcher.group
        with self._lock:
            self._watchers -= 1
            with group.lock:
                group.watchers.discard(watcher)
                empty = not group.watchers
            if empty and self._groups.get(group.key) is group:
                del self._groups[group.key]
                self._index = None

    def stream(self, watcher: Watcher, ends: Deadline | None, is_active) -> Iterator[Update]:
        """INITIAL, then every update until `ends` (None: for good), cancellation or shutdown
        (ENDING, after which the caller ends the call UNAVAILABLE)."""
        yield watcher.initial
        while True:
            # Waits are capped, so a stream without a deadline also re-checks its call.
            update = watcher.next(MAX_WAIT_SECONDS if ends is None else min(ends.left(), MAX_WAIT_SECONDS))
            if update is None:
                if ends is not None:
                    ends.check("while watching")
                if not is_active():
                    return
                continue
            yield update
            if update.reason == ENDING:
                raise Unavailable("the server is shutting down: watch again on another instance")

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"watchers": self._watchers, "watch_groups": len(self._groups)}

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._seen = self.offers.inventory.current()
        self._unsubscribe = self.feed.subscribe(self._on_change)
        self._thread.start()

    def shutdown(self) -> None:
        """Every stream gets its ENDING message; new streams are refused."""
        with self._lock:
            self._closing = True
            groups = list(self._groups.values())
        for group in groups:
            with group.lock:
                ending = Update(ENDING, group.answer)
                for watcher in group.watchers:
                    watcher.end(ending)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._events.put(None)

    def join(self) -> None:
        """Wait for the dispatcher to finish the update in progress, after shutdown."""
        if self._thread.is_alive():
            self._thread.join()

    def _on_change(self, change: Change) -> None:
        # On the change feed's thread: only hand over. The snapshot is the one this change made.
        self._events.put(("change", change, self.offers.inventory.current()))

    # --- the dispatcher -------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = time.monotonic() + self.customer_poll_seconds
        while True:
            try:
                event = self._events.get(timeout=max(next_poll - time.monotonic(), 0))
            except queue.Empty:
                event = ("customers",)
            if event is None:
                return
            try:
                if event[0] == "customers":
                    next_poll = time.monotonic() + self.customer_poll_seconds
                    self._poll_customers()
                elif event[0] == "group":
                    self._reprice([event[1]], event[2])
                else:
                    self._apply(event[1], event[2])
            except Exception:  # a failure here must not stop the watchers' updates
                log.exception("watch update failed on %s", event[0])

    def _groups_now(self) -> list[Group]:
        with self._lock:
            return list(self._groups.values())

    def _apply(self, change: Change, snapshot: InventorySnapshot | None) -> None:
        if change.kind == CONFIG:
            self._reprice(self._groups_now(), CONFIGURATION)
            return
        old, self._seen = self._seen, snapshot
        if change.car_ids is None or old is None or snapshot is None:
            self._reprice(self._groups_now(), INVENTORY)  # reloaded in full: anything may differ
            return
        rows = [car for car_id in change.car_ids for car in (old.by_id.get(car_id), snapshot.by_id.get(car_id))
                if car is not None]
        self._reprice(self.touched(rows), INVENTORY, set(change.car_ids))

    def touched(self, cars: list[Car]) -> list[Group]:
        """The groups whose prefilter one of these car rows passes."""
        with self._lock:
            if self._index is None:
                ordered = sorted(self._groups.values(), key=lambda g: g.customer.current_car_price)
                self._index = ([g.customer.current_car_price for g in ordered], ordered)
            bounds, ordered = self._index
        found: dict[int, Group] = {}
        for car in cars:
            # Only groups with price bound < the car's price can pass; then year, km, region, filters.
            for group in ordered[:bisect.bisect_left(bounds, car.price)]:
                if id(group) not in found and group.passes(car):
                    found[id(group)] = group
        return list(found.values())

    def _reprice(self, groups: list[Group], reason: str, cars: set[str] | None = None) -> None:
        for group in groups:
            if not group.watchers:
                continue
            query = group.query
            if group.stored and reason != CUSTOMER:  # the record as last read (re-read by the poll)
                query = replace(query, customer=CustomerRef(profile=group.customer))
            try:
                answer = self._answer(group.query, self.offers.generate(query, Deadline.after(self.reprice_seconds)))
            except ServiceError as exc:
                if exc.code in ("NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"):
                    self._end_group(group, exc)  # the customer was deleted or can no longer be priced
                else:
                    log.warning("watch: cannot re-price (%s); trying again on the next poll", exc)
                    self._retry(group, reason)
                continue
            reached = group.publish(reason, answer, cars)
            if reached:
                log.debug("watch: %s update to %d streams", reason, reached)

    def _retry(self, group: Group, reason: str) -> None:
        timer = threading.Timer(self.customer_poll_seconds, self._events.put, (("group", group, reason),))
        timer.daemon = True
        timer.start()

    def _end_group(self, group: Group, error: ServiceError) -> None:
        with group.lock:
            for watcher in group.watchers:
                watcher.end(error)

    def _poll_customers(self) -> None:
        groups = [g for g in self._groups_now() if g.stored and g.watchers]
        if not groups:
            return
        try:
            fresh = self.offers.repository.get_customers({g.customer.customer_id for g in groups},
                                                         Deadline.after(min(self.customer_poll_seconds, 2.0)))
        except ServiceError as exc:
            log.warning("watch: cannot re-read the watched customers (%s)", exc)
            return
        changed = [g for g in groups if not self._same_customer(g.customer, fresh.get(g.customer.customer_id))]
        if changed:
            self._reprice(changed, CUSTOMER)
            with self._lock:
                self._index = None  # their prefilter bounds may have moved

    @staticmethod
    def _same_customer(known: Customer, stored: Customer | None) -> bool:
        return stored is not None and stored == known
