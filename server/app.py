"""Assembles the service from its settings: database, breaker, caches, engine, services, server."""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from typing import TYPE_CHECKING

from grpc_health.v1 import health

from engine_ext import Engine, load_kernel

from .config import RedisSettings, Settings, SettingsStore
from .data import demo
from .data.breaker import CircuitBreaker
from .data.database import open_database
from .data.inventory import InventoryCache
from .data.repository import MYSQL_SESSION, Repository
from .metrics import Metrics
from .rpc.server import PROBE_TIMEOUT, CallInterceptors, HealthMonitor, create_server, rpc_threads
from .rpc.servicers import AdminServicer, OfferServicer, SearchServicer
from .services.admin import AdminService
from .services.changefeed import ChangeFeed
from .services.offers import OfferService
from .services.ratelimit import SharedTokenBuckets, TokenBuckets
from .services.search import SearchService
from .services.watch import WatchService
from .services.workers import Workers
from .tracing import Tracing

if TYPE_CHECKING:  # the client library loads only when Redis is configured (open_redis)
    from .data.redislink import RedisLink

log = logging.getLogger("tradeup.server")
STOP_SLACK = 0.5  # seconds after the grace period for the background threads to end


def open_repository(settings: Settings) -> Repository:
    d = settings.database
    return Repository(open_database(d, MYSQL_SESSION), CircuitBreaker(d.breaker_failures, d.breaker_reset_seconds))


def prepare_database(repository: Repository, seed_demo: bool, stop: threading.Event | None = None) -> None:
    """Migrate, and seed an empty embedded database with the demo data when asked to: in one
    transaction, which `stop` rolls back (the next start loads it then). A MySQL database is never
    filled with fake data at start: `python -m server seed` does that on request."""
    repository.migrate()
    if repository.counts() != (0, 0):
        return
    if seed_demo and repository.backend == "sqlite":
        log.info("empty database: loading the demo data")
        if repository.seed(demo.demo_cars(), demo.demo_customers(), only_if_empty=True, stop=stop):
            log.info("demo data loaded")
    else:
        log.warning("the database holds no cars and no customers (demo data: `python -m server seed`)")


def open_redis(settings: RedisSettings) -> RedisLink | None:
    """The Redis link when a URL is set; the client library is loaded only then (about 0.15 s of
    every start otherwise)."""
    if not settings.url:
        return None
    from .data.redislink import RedisLink
    return RedisLink(settings)


class Application:
    """The service of one process; `tracing` (server.tracing, None: off) traces its calls."""

    def __init__(self, settings: Settings, address: str | None = None, tracing: Tracing | None = None):
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
        self.redis = open_redis(settings.redis)
        self.tracing = tracing
        if tracing is not None:  # before the first connection: the drivers are traced from there on
            tracing.start(self.redis.client if self.redis else None)
        self.changes = ChangeFeed(self.repository, self.settings, self.inventory, settings.cache.change_poll_seconds,
                                  self.redis)
        s = settings.server
        workers = Workers(s.max_workers)  # pricing and search share the process's places
        self.search = SearchService(self.repository, self.inventory, workers, kernel)
        self.offers = OfferService(self.settings, self.repository, self.inventory, self.engine, workers,
                                   on_priced=lambda r: self.metrics.offers_priced(
                                       r.offers.tier_counts, r.offers.rejected, r.offers.cars_evaluated,
                                       r.engine_ms / 1e3))
        self._health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health")
        self.health = health.HealthServicer(experimental_non_blocking=True, experimental_thread_pool=self._health_pool)
        self.monitor = HealthMonitor(self.health, self._check_database, settings.database.health_check_seconds)
        self.repository.breaker.listeners.append(self.monitor.on_breaker)
        self.watch = WatchService(self.offers, self.changes, s.max_watchers, s.watch_queue_messages,
                                  s.watch_customer_poll_seconds, s.default_deadline_seconds,
                                  open_threads=s.max_workers, send_threads=s.watch_send_threads,
                                  stall_seconds=s.watch_stall_seconds)
        self.admin = AdminService(self.settings, self.repository, self.inventory, kernel.IMPLEMENTATION,
                                  lambda: bool(self.monitor.reachable), self.changes, self.watch.status)
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
        # Set once the database is prepared and followed: service calls end UNAVAILABLE until then.
        self.ready = threading.Event()
        self.stopping = threading.Event()  # a preparation in progress gives up (a seed rolls back)
        self.calls = CallInterceptors(settings, self.metrics, self.ready, limiter, tracing and tracing.tracer)
        self._rpc_pool = futures.ThreadPoolExecutor(max_workers=rpc_threads(settings), thread_name_prefix="rpc")
        self.server, self.port = create_server(
            settings, OfferServicer(self.offers, s.stream_batch_size, s.max_bulk_customers, self.watch,
                                    s.default_deadline_seconds),
            SearchServicer(self.search, s.default_deadline_seconds),
            AdminServicer(self.admin, s.default_deadline_seconds), self.health, self.calls.chain,
            self._rpc_pool, address)
        self._prepared = False
        self._prepare_lock = threading.Lock()
        self.stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._threads_ended = False

    @staticmethod
    def prepare_shared(settings: Settings, stop: threading.Event) -> dict:
        """Migrate and seed before worker processes fork (no gRPC object may exist yet)."""
        repository = open_repository(settings)
        try:
            repository.database.ping(PROBE_TIMEOUT)  # a stalled database fails fast (the workers retry)
            prepare_database(repository, settings.database.seed_demo_data, stop)
            cars, customers = repository.counts()
            return {"cars": cars, "customers": customers}
        finally:
            repository.database.close()

    def prepare_database(self) -> None:
        """Migrate and seed (see prepare_database), then open the pool's first connections."""
        with self._prepare_lock:
            if self._prepared:
                return
            prepare_database(self.repository, self.settings.current.database.seed_demo_data, self.stopping)
            self.repository.database.warm_up()
            self._prepared = True

    def _check_database(self, timeout: float) -> None:
        """The health monitor's probe: the database answers within `timeout` (through the breaker,
        whose probe it may be). Until one succeeds in full, each also migrates, seeds, loads the
        inventory and starts following the database, then the server is ready."""
        database = self.repository.database
        self.repository.breaker.call(lambda: database.ping(timeout), database.is_failure)
        if self.ready.is_set():
            return
        self.prepare_database()
        self.inventory.snapshot()
        # The database's configuration and inventory versions apply before OfferService serves.
        self.changes.start()
        self.watch.start()
        self.ready.set()

    def start(self, wait_ready: float | None = 10.0) -> None:
        """Listen at once; the database is checked (and prepared) by the health monitor's thread,
        and OfferService is NOT_SERVING until it answers. Waits up to `wait_ready` seconds (None:
        for as long as it takes) for that first check, which a stalled database fails within the
        probe's timeout."""
        with self._stop_lock:  # not while stopping, nor after
            if self.stopping.is_set():
                return
            self.server.start()
            self.monitor.start()
            s = self.settings.current.server
            if s.metrics_port:
                self.metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
        self.monitor.first_check.wait(wait_ready)

    def stop(self, grace: float | None = None) -> bool:
        """Health NOT_SERVING; new service calls end UNAVAILABLE while those in progress get up to
        `grace` seconds to finish; then the server stops and the background threads end. True when
        they all did within STOP_SLACK seconds after the grace (else one is stuck on a stalled
        database: it is left behind, with the connections, for the process's exit to end)."""
        with self._stop_lock:  # a second caller waits for the first to finish
            if not self.stopped.is_set():
                self._stop(grace)
            return self._threads_ended

    def _stop(self, grace: float | None) -> None:
        self.stopping.set()
        self.monitor.begin_shutdown()
        grace = self.settings.current.server.grace_seconds if grace is None else grace
        until = time.monotonic() + grace
        self.watch.shutdown()  # WatchOffers streams end now (ENDING, then UNAVAILABLE), not at the grace
        self.calls.admission.drain(grace)
        self.server.stop(max(0.0, until - time.monotonic())).wait()
        # Joined on a thread of their own, so that a thread stuck on the database holds up no one.
        ending = threading.Thread(target=self._end_threads, name="stop", daemon=True)
        ending.start()
        ending.join(max(0.0, until + STOP_SLACK - time.monotonic()))
        self._threads_ended = not ending.is_alive()
        if self._threads_ended:
            self.repository.database.close()  # never under a thread still using a connection
        else:
            log.warning("a background thread is still waiting for the database: not waiting for it")
        if self.tracing is not None:  # the spans of the last calls, in the time left
            self.tracing.close(max(0.0, until + STOP_SLACK - time.monotonic()))
        self.stopped.set()

    def _end_threads(self) -> None:
        self.metrics.close()  # its HTTP server notices within half a second
        self.monitor.join()  # before the two it may start: the change feed and the watch dispatcher
        self.changes.stop()
        self.watch.join()
        self._rpc_pool.shutdown(wait=True, cancel_futures=True)
        self.calls.close()
        self._health_pool.shutdown(wait=True)
        self.engine.close()
