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
current answer once (RESYNC) instead.

No thread waits for a stream: an idle watcher is a mailbox and nothing else. A few sender threads
(`server.watch_send_threads`) send the messages, one at a time per watcher, and end the calls; a
send blocks while the reader's HTTP/2 window is full, so a call whose send a reader holds for
`server.watch_stall_seconds` is cancelled. One timer thread ends each watch at its deadline.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import queue
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from engine_ext import Offer

from ..data.filters import Bounds
from ..data.inventory import InventorySnapshot, _order as prefilter_order
from ..domain import Car, Customer
from ..errors import DeadlineExceeded, ResourceExhausted, ServiceError, Unavailable
from .changefeed import CONFIG, Change, ChangeFeed
from ..deadline import Deadline
from .offers import CustomerRef, OfferQuery, OfferResult, OfferService

log = logging.getLogger("tradeup.watch")

INITIAL, INVENTORY, CONFIGURATION, CUSTOMER, RESYNC, ENDING = (
    "initial", "inventory", "configuration", "customer", "resync", "ending")

OfferKey = tuple[str, int]  # (car_id, term)
TERM_CODES = 10000  # above any term in months: car code * TERM_CODES + term identifies an offer
GONE = object()  # what ends the call of a client that left


@dataclass(frozen=True)
class Answer:
    """One priced answer of a group. Only the engine's columns of the offers returned are kept:
    the offers as objects are built while comparing two answers, so groups hold no offer objects."""
    result: OfferResult
    last_key: tuple | None = None  # prefilter order of the last car selected, when the limit cut it

    def keyed(self, car_codes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """The offers returned, best first, as numbers (car code * TERM_CODES + term) and as
        engine slots: two answers compare a thousand offers each without a Python step per offer."""
        offers = self.result.offers
        terms = np.asarray(offers.plan.columns.terms, dtype=np.int64)
        slots = np.frombuffer(offers.order, dtype=offers.order.typecode)[:self.result.returned].astype(np.int64)
        cars = np.fromiter(map(car_codes.__getitem__, offers.car_ids), np.int64, len(offers.car_ids))
        return cars[slots // len(terms)] * TERM_CODES + terms[slots % len(terms)], slots

    def key(self, slot: int) -> OfferKey:
        """The (car, term) of an engine slot."""
        offers = self.result.offers
        terms = offers.plan.columns.terms
        return offers.car_ids[slot // len(terms)], terms[slot % len(terms)]

    def offers(self) -> dict[OfferKey, Offer]:
        """The offers returned (after max_offers), by (car, term)."""
        at = self.result.offers.at_slot
        return {self.key(slot): at(slot) for slot in self.result.offers.order[:self.result.returned]}

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
        car_codes = {car: code for code, car in enumerate({*old.result.offers.car_ids, *new.result.offers.car_ids})}
        before, old_slots = old.keyed(car_codes)
        after, new_slots = new.keyed(car_codes)
        was, now = old.result.offers.at_slot, new.result.offers.at_slot
        same_inputs = cars is not None and old.result.config_version == new.result.config_version \
            and old.result.customer == new.result.customer
        kept, still = np.isin(after, before, assume_unique=True), np.isin(before, after, assume_unique=True)
        added = [now(slot) for slot in new_slots[~kept].tolist()]
        removed = [old.key(slot) for slot in old_slots[~still].tolist()]
        if same_inputs:  # only the offers of the cars that changed can have new amounts
            kept &= np.isin(after // TERM_CODES, [car_codes[car] for car in cars if car in car_codes])
        old_slot = dict(zip(before[still].tolist(), old_slots[still].tolist())) if kept.any() else {}
        changed = [offer for key, slot in zip(after[kept].tolist(), new_slots[kept].tolist())
                   if (offer := now(slot)) != was(old_slot[key])]
        if not (added or removed or changed) and old.totals() == new.totals():
            return None
        return cls(reason, new, added=added, removed=removed, changed=changed)


@dataclass(frozen=True, slots=True)
class Stream:
    """A watcher's call, as the RPC layer serves it. send(update) returns once the message is
    written (while the reader's window is full, it waits); end(error) ends the call with that
    error, or, given None, the call its client left; cancel() drops the call."""
    send: Callable[[Update], None]
    end: Callable[[ServiceError | None], None]
    cancel: Callable[[], None]


class Watcher:
    """One stream's mailbox: bounded; falls back to one full answer when the reader lags. At most
    one delivery of a watcher is scheduled or running at a time (`_busy`), so its messages go
    out one at a time and in order."""

    __slots__ = ("group", "limit", "stream", "_wake", "_lock", "_pending", "_resync", "_ended", "_cancelled",
                 "_busy", "_done", "__weakref__")

    def __init__(self, group: "Group", limit: int, stream: Stream, wake: Callable[["Watcher"], None]):
        self.group = group
        self.limit = limit
        self.stream = stream
        self._wake = wake  # schedules a delivery
        self._lock = threading.Lock()
        self._pending: list[Update] = []  # at most `limit`: a list is smaller than a deque
        self._resync = False
        self._ended: Update | ServiceError | None = None  # ENDING update or the error that ends it
        self._cancelled = False
        self._busy = True  # until the INITIAL is handed over (WatchService.open)
        self._done = False  # its call is ended

    def push(self, update: Update) -> None:
        """Called with the group's lock held, so pushes follow the group's answers in order."""
        with self._lock:
            if len(self._pending) >= self.limit:
                self._pending.clear()
                self._resync = True
            elif not self._resync:
                self._pending.append(update)
            wake = self._claim()
        if wake:
            self._wake(self)

    def end(self, why: Update | ServiceError) -> None:
        with self._lock:
            if self._ended is None:
                self._ended = why
            wake = self._claim()
        if wake:
            self._wake(self)

    def cancel(self) -> None:
        """The client left (gRPC's callback at the end of the call: quick, never blocks)."""
        with self._lock:
            self._cancelled = True
            wake = self._claim()
        if wake:
            self._wake(self)

    def _claim(self) -> bool:
        """True when the caller must schedule a delivery: none is scheduled or running."""
        if self._busy or self._done:
            return False
        self._busy = True
        return True

    def next(self) -> Update | ServiceError | object | None:
        """By its delivery: the next update to send; else what ends the call (an error, GONE);
        else None, and the watcher waits for the next push."""
        with self._lock:
            if self._cancelled or isinstance(self._ended, ServiceError):
                self._done = True
                return GONE if self._cancelled else self._ended
            if self._ended is not None:  # ENDING, then the call ends
                ending, self._ended = self._ended, Unavailable(
                    "the server is shutting down: watch again on another instance", reason="SHUTTING_DOWN")
                return ending
            if self._pending:
                return self._pending.pop(0)
            if not self._resync:
                self._busy = False
                return None
        with self.group.lock, self._lock:  # no push in between: later ones follow this answer
            self._pending.clear()
            self._resync = False
            return self.group.full(RESYNC)


class Group:
    """The watchers of one (customer, request), with the answer they all last received."""

    def __init__(self, key: tuple, query: OfferQuery, answer: Answer):
        self.key = key
        self.query = query
        self.answer = answer
        self.lock = threading.Lock()
        self.watchers: set[Watcher] = set()
        self._bounds: tuple[Customer, Bounds | None] | None = None  # the filters bound to the customer
        # INITIAL and RESYNC of the current answer, by reason, while a watcher holds one: a whole
        # answer encoded is large (~150 KB for a thousand offers), each group's part is small.
        self._full: weakref.WeakValueDictionary[str, Update] = weakref.WeakValueDictionary()

    def full(self, reason: str) -> Update:
        """The whole current answer (lock held): one Update, so one encoding, for the watchers
        being sent it."""
        update = self._full.get(reason)
        if update is None or update.answer is not self.answer:
            update = self._full[reason] = Update(reason, self.answer, full=True)
        return update

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
                 customer_poll_seconds: float, reprice_seconds: float, open_threads: int, send_threads: int,
                 stall_seconds: float):
        """`reprice_seconds`: the deadline of each re-pricing; `open_threads`: the threads that open
        watches (`open_pool`: gRPC calls WatchOffers there); `send_threads`, `stall_seconds`: see above."""
        self.offers = offers
        self.reprice_seconds = reprice_seconds
        self.feed = feed
        self.max_watchers = max_watchers
        self.queue_limit = queue_limit
        self.customer_poll_seconds = customer_poll_seconds
        self.stall_seconds = stall_seconds
        self._groups: dict[tuple, Group] = {}
        self._watchers = 0
        self._lock = threading.Lock()
        self._index: tuple[list[float], list[Group]] | None = None  # groups by prefilter price bound
        self._events: queue.Queue = queue.Queue()
        self._seen: InventorySnapshot | None = None  # the snapshot the last inventory event left
        self._closing = False
        self._unsubscribe = None
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self.open_pool = ThreadPoolExecutor(open_threads, thread_name_prefix="watch-open")
        self._senders = ThreadPoolExecutor(send_threads, thread_name_prefix="watch-send")
        self._timer = threading.Condition()
        # A heap; weak: a watch that ended before its deadline is not kept until then.
        self._deadlines: list[tuple[float, int, weakref.ref[Watcher]]] = []
        self._order = itertools.count()
        self._sending: dict[Watcher, float] = {}  # sends in progress, since when
        self._timer_thread = threading.Thread(target=self._run_timer, name="watch-timer", daemon=True)
        self._timer_closed = False

    # --- streams ------------------------------------------------------------------------------
    def open(self, query: OfferQuery, deadline: Deadline, ends: Deadline | None, stream: Stream) -> Watcher:
        """A watcher, its INITIAL update sent; raises as GenerateOffers would for a bad request.
        It lasts until `ends` (None: for good), its client leaves or the server shuts down (ENDING,
        then UNAVAILABLE)."""
        key = group_key(query)
        with self._lock:
            if self._closing:
                raise Unavailable("the server is shutting down", reason="SHUTTING_DOWN")
            if self._watchers >= self.max_watchers:
                raise ResourceExhausted(f"this process already serves {self.max_watchers} WatchOffers streams",
                                        reason="TOO_MANY_WATCHERS")
            self._watchers += 1
        try:
            with self._lock:
                joined = self._join(self._groups.get(key), stream)
            if joined is None:
                result = self.offers.generate(query, deadline)  # validates; outside the lock
                with self._lock:
                    group = self._groups.get(key)
                    if group is None:
                        group = self._groups[key] = Group(key, query, self._answer(query, result))
                        self._index = None
                        self._catch_up(group)
                    joined = self._join(group, stream)
        except BaseException:
            with self._lock:
                self._watchers -= 1
            raise
        watcher, initial = joined
        stream.send(initial)
        if ends is not None:
            with self._timer:
                heapq.heappush(self._deadlines, (ends.at, next(self._order), weakref.ref(watcher)))
                self._timer.notify()
        self._schedule(watcher)  # what was pushed meanwhile
        return watcher

    def _answer(self, query: OfferQuery, result: OfferResult) -> Answer:
        limit = query.max_cars or self.offers.settings.current.prefilter.default_limit
        car_ids = result.offers.car_ids
        snapshot = self.offers.inventory.current()
        last = snapshot.by_id.get(car_ids[-1]) if snapshot is not None and len(car_ids) >= limit else None
        # Kept while the group lives: the columns of the offers returned only, not of every car priced.
        return Answer(replace(result, offers=result.offers.best(result.returned)),
                      prefilter_order(last) if last is not None else None)

    def _join(self, group: Group | None, stream: Stream) -> tuple[Watcher, Update] | None:
        if group is None:
            return None
        watcher = Watcher(group, self.queue_limit, stream, self._schedule)
        with group.lock:
            group.watchers.add(watcher)
            return watcher, group.full(INITIAL)

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

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"watchers": self._watchers, "watch_groups": len(self._groups)}

    # --- the senders --------------------------------------------------------------------------
    def _schedule(self, watcher: Watcher) -> None:
        try:
            self._senders.submit(self._deliver, watcher)
        except RuntimeError:  # stopped: the server is, so its calls are over and nothing here blocks
            self._deliver(watcher)

    def _deliver(self, watcher: Watcher) -> None:
        """On a sender thread: the watcher's next message, or the end of its call."""
        step = watcher.next()
        if step is None:
            return
        try:
            if isinstance(step, Update):
                self._send(watcher, step)
            else:
                self.close(watcher)
                watcher.stream.end(None if step is GONE else step)
                return
        except Exception:  # a bug: the call is dropped rather than left open
            log.exception("watch: cannot deliver to a stream")
            watcher.stream.cancel()
            watcher.cancel()
        self._schedule(watcher)  # its next step, after the others' turn

    def _send(self, watcher: Watcher, update: Update) -> None:
        with self._timer:
            if not self._sending:
                self._timer.notify()
            self._sending[watcher] = time.monotonic()
        try:
            watcher.stream.send(update)
        finally:
            with self._timer:
                self._sending.pop(watcher, None)

    def _run_timer(self) -> None:
        """Ends each watch at its deadline, and cancels a call whose send its reader held for
        stall_seconds: stuck readers hold the sender threads that long at most."""
        while True:
            with self._timer:
                if self._timer_closed:
                    return
                now = time.monotonic()
                expired = []
                while self._deadlines and self._deadlines[0][0] <= now:
                    expired.append(heapq.heappop(self._deadlines)[2]())
                stalled = [w for w, since in self._sending.items() if now - since >= self.stall_seconds]
                for watcher in stalled:
                    del self._sending[watcher]
                if not (expired or stalled):
                    due = ([self._deadlines[0][0]] if self._deadlines else []) + \
                        ([min(self._sending.values()) + self.stall_seconds] if self._sending else [])
                    self._timer.wait(min(due) - now if due else None)
                    continue
            for watcher in filter(None, expired):
                watcher.end(DeadlineExceeded("deadline exceeded while watching"))
            for watcher in stalled:
                log.warning("watch: a reader left a message unread for %.0f s: its stream is cancelled",
                            self.stall_seconds)
                watcher.stream.cancel()

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._seen = self.offers.inventory.current()
        self._unsubscribe = self.feed.subscribe(self._on_change)
        self._thread.start()
        self._timer_thread.start()

    def shutdown(self) -> None:
        """Every stream gets its ENDING message; new streams are refused."""
        with self._lock:
            self._closing = True
            groups = list(self._groups.values())
        for group in groups:
            with group.lock:
                ending = Update(ENDING, group.answer)
                watchers = list(group.watchers)
            for watcher in watchers:
                watcher.end(ending)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._events.put(None)

    def join(self) -> None:
        """After shutdown and once the server stopped: wait for the dispatcher to finish the update
        in progress, and for the senders (the calls are over: no send blocks)."""
        with self._timer:
            self._timer_closed = True
            self._timer.notify()
        for thread in (self._thread, self._timer_thread):
            if thread.is_alive():
                thread.join()
        self.open_pool.shutdown(wait=True, cancel_futures=True)
        self._senders.shutdown(wait=True)

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
