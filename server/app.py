"""Assembles the service from its settings: database, breaker, caches, engine, services, server."""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

from grpc_health.v1 import health

from engine_ext import Engine, load_kernel

from .config import Settings, SettingsStore
from .data import demo
from .data.breaker import CircuitBreaker
from .data.database import open_database
from .data.inventory import InventoryCache
from .data.redislink import RedisLink
from .data.repository import Repository
from .metrics import Metrics
from .rpc.server import PROBE_TIMEOUT, CallInterceptors, HealthMonitor, create_server, rpc_threads
from .rpc.servicers import AdminServicer, OfferServicer
from .services.admin import AdminService
from .services.changefeed import ChangeFeed
from .services.offers import OfferService
from .services.ratelimit import SharedTokenBuckets, TokenBuckets
from .services.watch import WatchService
from .services.workers import Workers

log = logging.getLogger("tradeup.server")


def open_repository(settings: Settings) -> Repository:
    d = settings.database
    return Repository(open_database(d), CircuitBreaker(d.breaker_failures, d.breaker_reset_seconds))


def seed_demo_data(repository: Repository, cars: int = 4000, customers: int = 5000) -> None:
    repository.put_cars(demo.demo_cars(cars))
    repository.put_customers(demo.demo_customers(customers))


def prepare_database(repository: Repository, seed_demo: bool) -> None:
    """Migrate, and seed an empty embedded database with the demo data when asked to. A MySQL
    database is never filled with fake data at start: `python -m server seed` does that on request."""
    repository.migrate()
    if repository.counts() != (0, 0):
        return
    if seed_demo and repository.backend == "sqlite":
        log.info("empty database: loading the demo data")
        seed_demo_data(repository)
    else:
        log.warning("the database holds no cars and no customers (demo data: `python -m server seed`)")


class Application:
    def __init__(self, settings: Settings, address: str | None = None):
        self.settings = SettingsStore(settings)
        self.metrics = Metrics()
        self.repository = open_repository(settings)
        self.repository.on_query = self.metrics.query_done
        kernel = load_kernel(settings.engine.implementation)
        e = settings.engine
        self.engine = Engine(kernel, workers=e.workers or None, offer_chunk_cars=e.offer_chunk_cars,
                             subsidy_chunk_cars=e.subsidy_chunk_cars)
        self.inventory = InventoryCache(self.repository, settings.cache.inventory_ttl_seconds,
                                        settings.cache.prefilter_max_entries,
                                        overlap_seconds=settings.cache.change_overlap_seconds)
        self.redis = RedisLink(settings.redis) if settings.redis.url else None
        self.changes = ChangeFeed(self.repository, self.settings, self.inventory, settings.cache.change_poll_seconds,
                                  self.redis)
        s = settings.server
        self.offers = OfferService(self.settings, self.repository, self.inventory, self.engine, Workers(s.max_workers),
                                   on_priced=lambda r: self.metrics.offers_priced(
                                       r.offers.tier_counts, r.offers.rejected, r.offers.cars_evaluated,
                                       r.engine_ms / 1e3))
        self._health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self.health = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=self._health_pool)
        self.monitor = HealthMonitor(self.health, self._check_database, settings.database.health_check_seconds)
        self.repository.breaker.listeners.append(self.monitor.on_breaker)
        self.admin = AdminService(self.settings, self.repository, self.inventory, kernel.IMPLEMENTATION,
                                  lambda: bool(self.monitor.reachable), self.changes)
        self.metrics.watch_status(self.admin.status)
        self.metrics_port = 0
        if not (s.log_customer_ids or s.log_hash_key):
            log.warning("server.log_hash_key is not set: customer ids are left out of the logs "
                        "(set TRADEUP_LOG_HASH_KEY, the same on every replica, to log their keyed hash)")
        limiter = None
        if s.rate_limit_per_second:
            limiter = TokenBuckets(s.rate_limit_per_second, s.rate_limit_burst)
            if self.redis is not None:
                limiter = SharedTokenBuckets(s.rate_limit_per_second, s.rate_limit_burst, self.redis, limiter)
        self.watch = WatchService(self.offers, self.changes, s.max_watchers, s.watch_queue_messages,
                                  s.watch_customer_poll_seconds, s.default_deadline_seconds)
        self.ready = threading.Event()  # the database prepared and followed: service calls are admitted
        self.calls = CallInterceptors(settings, self.metrics, self.ready, limiter)
        self.admission = self.calls.admission
        self._rpc_pool = futures.ThreadPoolExecutor(max_workers=rpc_threads(settings), thread_name_prefix="rpc")
        self.server, self.port = create_server(
            settings, OfferServicer(self.offers, s.stream_batch_size, s.max_bulk_customers, self.watch,
                                    s.default_deadline_seconds),
            AdminServicer(self.admin), self.health, self.calls.chain,
            self._rpc_pool, address)
        self._prepared = False
        self._following = False  # the change feed runs (started by the first database check)
        self._prepare_lock = threading.Lock()
        self.stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @staticmethod
    def prepare_shared(settings: Settings) -> dict:
        """Migrate and seed before worker processes fork (no gRPC object may exist yet)."""
        repository = open_repository(settings)
        try:
            repository.database.ping(PROBE_TIMEOUT)  # a stalled database fails fast (the workers retry)
            prepare_database(repository, settings.database.seed_demo_data)
            cars, customers = repository.counts()
            return {"cars": cars, "customers": customers}
        finally:
            repository.database.close()

    def prepare_database(self) -> None:
        """Migrate and seed (see prepare_database), then open the pool's first connections."""
        with self._prepare_lock:
            if self._prepared:
                return
            prepare_database(self.repository, self.settings.current.database.seed_demo_data)
            self.repository.database.warm_up()
            self._prepared = True

    def _check_database(self, timeout: float) -> None:
        """The health monitor's probe: the database answers within `timeout` (through the breaker,
        whose probe it may be). The first answer also migrates, seeds and loads the inventory."""
        database = self.repository.database
        self.repository.breaker.call(lambda: database.ping(timeout), database.is_failure)
        if not self._prepared:
            self.prepare_database()
        if not self._following:
            self.inventory.snapshot()
            # The database's configuration and inventory versions apply before OfferService serves.
            self.changes.start()
            self.watch.start()
            self._following = True
            self.ready.set()

    def start(self, wait_ready: float | None = 10.0) -> None:
        """Listen at once; the database is checked (and prepared) by the health monitor's thread,
        and OfferService is NOT_SERVING until it answers. Waits up to `wait_ready` seconds (None:
        for as long as it takes) for that first check, which a stalled database fails within the
        probe's timeout."""
        self.server.start()
        self.monitor.start()
        s = self.settings.current.server
        if s.metrics_port:
            self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
        self.monitor.first_check.wait(wait_ready)

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING; new service calls end UNAVAILABLE while those in progress get up to
        `grace` seconds to finish; then the server stops."""
        with self._stop_lock:  # a second caller waits for the first to finish
            if not self.stopped.is_set():
                self._stop(grace)

    def _stop(self, grace: float | None) -> None:
        self.monitor.begin_shutdown()
        grace = self.settings.current.server.grace_seconds if grace is None else grace
        until = time.monotonic() + grace
        self.watch.shutdown()  # WatchOffers streams end now (ENDING, then UNAVAILABLE), not at the grace
        self.admission.drain(grace)
        self.server.stop(max(0.0, until - time.monotonic())).wait()
        self._rpc_pool.shutdown(wait=True)
        self.calls.close()
        self._health_pool.shutdown(wait=True)
        self.changes.stop()
        self.metrics.close()
        self.engine.close()
        self.repository.database.close()
        self.stopped.set()
