"""The change feed: every process of every replica follows the configuration and the inventory.

The database is the truth. A background thread per process reads one version row (and the
newest inventory stamp) every `cache.change_poll_seconds` (0.5 s): a new configuration version
makes it load the overrides and swap in the new settings; new inventory stamps make it apply the
changed rows to the snapshot; a reload request (InvalidateCache) makes it reload in full. With
Redis, a message on the change channel wakes every process to do the same at once; without (or
while Redis is down) the tick alone gets there within one interval. Every
`cache.reconcile_seconds` (15 s) a tick also reconciles the snapshot with the database (see
InventoryCache.reconcile): rows deleted by plain SQL and MySQL writes that committed after the
overlap window arrive then.

Subscribers inside the process hear every change to the snapshot, whatever made it (a tick,
reconciliation, a reload on the request path after the TTL), and every configuration applied
(`subscribe`): a `Change` says "configuration now at version V" or "inventory now at version V;
these car ids changed" (`car_ids` None: reloaded in full).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..config import SettingsStore
from ..data.inventory import InventoryCache
from ..data.repository import ChangeState, Repository
from ..deadline import Deadline
from ..errors import ConfigError, DeadlineExceeded

if TYPE_CHECKING:  # the client library loads only when Redis is configured
    from ..data.redislink import RedisLink

log = logging.getLogger("tradeup.changes")

CONFIG = "config"
INVENTORY = "inventory"


@dataclass(frozen=True)
class Change:
    kind: str                            # CONFIG or INVENTORY
    version: int                         # the version now applied in this process
    car_ids: tuple[str, ...] | None = ()  # INVENTORY: the cars changed; None: reloaded in full


Listener = Callable[[Change], None]


class ChangeFeed:
    def __init__(self, repository: Repository, settings: SettingsStore, inventory: InventoryCache,
                 interval: float, redis: RedisLink | None = None):
        self.repository = repository
        self.settings = settings
        self.inventory = inventory
        self.interval = interval
        self.redis = redis
        self.tick_seconds = max(min(interval * 4, 2.0), 0.2)  # the deadline of one tick
        self._listeners: list[Listener] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._rejected_version: int | None = None
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="change-feed", daemon=True)
        self.reconcile_interval = settings.current.cache.reconcile_seconds
        self._next_reconcile = time.monotonic() + self.reconcile_interval
        inventory.listen(lambda version, car_ids: self._notify(Change(INVENTORY, version, car_ids)))

    # --- subscribers ----------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener(Change) for every change applied in this process; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, change: Change) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a subscriber's bug must not stop the feed
                log.exception("change listener failed on %s", change)

    # --- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        """Apply what the database holds now, then follow it on a thread (and on Redis)."""
        self.tick()
        self._thread.start()
        if self.redis is not None:
            self.redis.listen(lambda message: self._wake.set())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.redis is not None:
            self.redis.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(self.interval, max(self._next_reconcile - time.monotonic(), 0.0)))
            self._wake.clear()
            if not self._stop.is_set():
                self.tick()

    def tick(self, deadline: Deadline | None = None) -> bool:
        """One check of the database, within `deadline` (default: tick_seconds); False when it
        could not be read (tried again next tick)."""
        deadline = deadline or Deadline.after(self.tick_seconds)
        try:
            deadline.acquire(self._tick_lock, "the change feed")
        except DeadlineExceeded:  # the tick in progress still runs
            return False
        try:
            self._tick(deadline)
        except Exception as exc:  # the database is down or slow: health reports it; retry
            if not self._failing:
                log.warning("change feed cannot read the database (%s); retrying every %.2fs", exc, self.interval)
            self._failing = True
            return False
        finally:
            self._tick_lock.release()
        if self._failing:
            log.warning("change feed reading the database again")
            self._failing = False
        return True

    def _tick(self, deadline: Deadline) -> None:
        state = self.repository.change_state(deadline)
        if state.latest_stamp is not None and (state.inventory_mark is None
                                               or state.latest_stamp > state.inventory_mark):
            # Rows stamped by a writer that did not move the version (plain SQL): move it once.
            self.repository.note_inventory_change(state.latest_stamp, deadline)
            state = self.repository.change_state(deadline)
            self._publish(INVENTORY, state.inventory_version)
        self._follow_config(state, deadline)
        self.inventory.refresh(state, deadline)  # the cache tells the subscribers
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + self.reconcile_interval
            self._reconcile(deadline)

    def _follow_config(self, state: ChangeState, deadline: Deadline) -> None:
        if state.config_version == self.settings.current.version or state.config_version == self._rejected_version:
            return
        version, overrides = self.repository.config_overrides(deadline)
        try:
            self.settings.apply(version, overrides)
        except ConfigError as exc:  # written around the admin service: keep the settings in effect
            self._rejected_version = version
            log.error("configuration version %d in the database is invalid (%s); keeping version %d",
                      version, exc, self.settings.current.version)
            return
        log.info("configuration version %d applied", version, extra={"config_version": version})
        self._notify(Change(CONFIG, version))

    def _reconcile(self, deadline: Deadline) -> None:
        applied = self.inventory.reconcile(deadline)
        if applied is not None:
            version, car_ids = applied
            log.info("reconciliation applied %d cars the change feed had missed (inventory version %d)",
                     len(car_ids), version, extra={"inventory_version": version})

    # --- writers in this process ----------------------------------------------------------------
    def _publish(self, kind: str, version: int) -> None:
        if self.redis is not None:
            self.redis.publish({"kind": kind, "version": version})

    def changed(self, kind: str, version: int, deadline: Deadline) -> None:
        """This process wrote a change: apply it here now (within the writer's deadline; else
        on the next tick) and wake every other process."""
        self._publish(kind, version)
        self.tick(deadline)

    def invalidate(self, deadline: Deadline) -> tuple[int, int]:
        """InvalidateCache: every process of every replica reloads the inventory in full.
        Returns (entries dropped here, the new inventory version)."""
        removed = self.inventory.invalidate()
        version = self.repository.request_reload(deadline)
        self._publish(INVENTORY, version)
        try:  # reload here now rather than in the next request; if it fails, that request will
            version = self.inventory.snapshot(deadline).version
        except Exception as exc:
            log.warning("inventory reload after invalidation failed (%s); the next request reloads", exc)
        return removed, version

    def status(self) -> dict[str, Any]:
        return {"config_version": self.settings.current.version,
                "redis_state": "off" if self.redis is None else self.redis.state}
