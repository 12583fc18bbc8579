"""Assembles the service from its settings: database, breaker, caches, engine, services, server."""
from __future__ import annotations

import logging
import threading
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
from .rpc.interceptors import ServiceInterceptor
from .rpc.pools import MethodRouter
from .rpc.server import HealthMonitor, create_server
from .rpc.servicers import AdminServicer, OfferServicer
from .services.admin import AdminService
from .services.changefeed import ChangeFeed
from .services.offers import OfferService
from .services.ratelimit import SharedTokenBuckets, TokenBuckets
from .services.watch import WatchService

log = logging.getLogger("tradeup.server")
WATCH_METHOD = "/tradeup.v1.OfferService/WatchOffers"


def open_repository(settings: Settings) -> Repository:
    d = settings.database
    return Repository(open_database(d), CircuitBreaker(d.breaker_failures, d.breaker_reset_seconds))


def seed_demo_data(repository: Repository, cars: int = 4000, customers: int = 5000) -> None:
    repository.put_cars(demo.demo_cars(cars))
    repository.put_customers(demo.demo_customers(customers))


def prepare_database(repository: Repository, seed_demo: bool) -> None:
    """Migrate, and seed an empty database with the demo data when asked to."""
    repository.migrate()
    if seed_demo and repository.counts() == (0, 0):
        log.info("empty database: loading the demo data")
        seed_demo_data(repository)


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
        self.offers = OfferService(self.settings, self.repository, self.inventory, self.engine,
                                   on_priced=lambda r: self.metrics.offers_priced(
                                       r.offers.tier_counts, r.offers.rejected, r.offers.cars_evaluated,
                                       r.engine_ms / 1e3))
        self._health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self.health = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=self._health_pool)
        self.monitor = HealthMonitor(self.health, self._ping, settings.database.health_check_seconds)
        self.repository.breaker.listeners.append(self.monitor.on_breaker)
        self.admin = AdminService(self.settings, self.repository, self.inventory, kernel.IMPLEMENTATION,
                                  lambda: bool(self.monitor.reachable), self.changes)
        self.metrics.watch_status(self.admin.status)
        self.metrics_port = 0
        s = settings.server
        limiter = None
        if s.rate_limit_per_second:
            limiter = TokenBuckets(s.rate_limit_per_second, s.rate_limit_burst)
            if self.redis is not None:
                limiter = SharedTokenBuckets(s.rate_limit_per_second, s.rate_limit_burst, self.redis, limiter)
        self.interceptor = ServiceInterceptor(self.metrics, s.log_customer_ids, limiter, s.rate_limit_key)
        self.watch = WatchService(self.offers, self.changes, s.max_watchers, s.watch_queue_messages,
                                  s.watch_customer_poll_seconds)
        self._rpc_pool = futures.ThreadPoolExecutor(max_workers=s.max_workers, thread_name_prefix="rpc")
        # WatchOffers streams hold a thread each: their own pool (a few spare threads refuse the excess).
        self._watch_pool = futures.ThreadPoolExecutor(max_workers=s.max_watchers + 4, thread_name_prefix="watch")
        self.server, self.port = create_server(
            settings, OfferServicer(self.offers, s.stream_batch_size, s.max_bulk_customers, self.watch),
            AdminServicer(self.admin), self.health, self.interceptor,
            MethodRouter(self._rpc_pool, {WATCH_METHOD: self._watch_pool}), address)
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self.stopped = threading.Event()

    @staticmethod
    def prepare_shared(settings: Settings) -> dict:
        """Migrate and seed before worker processes fork (no gRPC object may exist yet)."""
        repository = open_repository(settings)
        try:
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

    def _ping(self, timeout: float) -> None:
        if not self._prepared:
            self.prepare_database()  # the database was down at start-up
        self.repository.ping(timeout)

    def start(self) -> None:
        try:
            self.prepare_database()
            self.inventory.snapshot()
        except Exception as exc:  # serve anyway: health says NOT_SERVING until the database answers
            log.warning("database not ready at start-up (%s); will retry", exc)
        self.changes.start()  # the database's configuration applies before the first call
        self.watch.start()
        self.server.start()
        self.monitor.start()
        s = self.settings.current.server
        if s.metrics_port:
            self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        if self.stopped.is_set():
            return
        self.monitor.begin_shutdown()
        grace = self.settings.current.server.grace_seconds if grace is None else grace
        self.watch.shutdown()  # WatchOffers streams end now (ENDING, then UNAVAILABLE), not at the grace
        self.server.stop(grace).wait()
        self._rpc_pool.shutdown(wait=True)
        self._watch_pool.shutdown(wait=True)
        self._health_pool.shutdown(wait=True)
        self.changes.stop()
        self.metrics.close()
        self.engine.close()
        self.repository.database.close()
        self.stopped.set()
