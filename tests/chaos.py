"""Chaos run: `python -m tests.chaos --seconds N` (`make chaos`; tests/test_chaos.py runs it briefly).

Two instances of `python -m server` (TRADEUP_PROCESSES=2 each, each on its own loopback port,
PYTHONFAULTHANDLER=1) on one private MariaDB holding the demo data, with a real redis-server.
After a warm-up, for N seconds and at the same time:
- callers of every RPC, with and without deadlines, some cancelling mid-stream, some reading
  slowly, bulk streams that send nothing for seconds (and one that never half-closes), bad
  inputs (invalid fields; garbage bytes through a generic unary call) and the retrying
  OfferClient over both instances;
- chaos, one action every few seconds in a cycle: a business parameter changed through
  AdminService, cars sold, repriced and deleted by plain SQL, MariaDB restarted on its data
  directory, Redis killed and started again, one instance stopped with SIGTERM and started again;
- a prober process checking grpc.health.v1 Check("") on every live instance every 100 ms.
Everything a call saw is recorded; the verdicts are computed afterwards from the record:
- no INTERNAL or UNKNOWN status;
- no server process crashed or exited non-zero (SIGTERM must give 0);
- no call ended later than its deadline + 100 ms (no deadline: the servers' default call
  deadline, DEFAULT_DEADLINE, which the harness sets shorter than a run);
- health answered SERVING within 100 ms on every live instance, throughout;
- every OK answer was priced from inputs no older than the change feed's bound: a car changed
  more than (change_poll_seconds + reconcile bound + margin) before the call started shows in
  its new state, a parameter change acknowledged more than 1 s before shows in config_version;
- the retrying client got OK while only one instance was away (the other serving);
- threads and RSS of each instance back within 10 % of their level after the warm-up.
Every wait is bounded, only loopback is used, and every process started is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import grpc
import pymysql
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from client import OfferClient  # noqa: E402
from conftest import free_port  # noqa: E402
from mariadb import MariaDBServer, binaries_available  # noqa: E402
from protos.tradeup.v1 import admin_pb2, offers_pb2 as pb, offers_pb2_grpc  # noqa: E402
from redis_server import RedisServer, binary as redis_binary  # noqa: E402
from server.data import demo  # noqa: E402

ADMIN_TOKEN = "chaos-admin-token"
PROCESSES = 2
CUSTOMERS = [f"C{k:05d}" for k in range(1, 301)]
LATE_MARGIN = 0.1         # seconds past its deadline a call may end
HEALTH_BUDGET = 0.1       # seconds a health check may take
PROBE_INTERVAL = 0.1
PARAMETER_BOUND = 1.0     # a parameter acknowledged this long before a call shows in it
FEED_MARGIN = 0.5         # on top of change_poll_seconds + the reconcile bound
DEFAULT_DEADLINE = 10.0   # the servers' default call deadline (shorter than a run, so it is seen at work)
RECONCILE_SECONDS = 2.0   # the servers' reconciliation interval: deletes by plain SQL are seen within it
RESOURCE_TOLERANCE = 0.10
# Threads a server process may add after the warm-up without leaking: its thread pools (gRPC's
# server and core threads, the watch senders and openers) start threads as the calls held at once
# need them, up to their bounds, and never stop them (seen: up to 7 an instance of two processes
# in a 70 s run); a leak instead grows with the run (`make chaos` runs ten minutes).
POOL_THREADS_SLACK = 6
HANG_SLACK = 1.0          # a call this far past its limit is cancelled by the harness
SETTLE_SECONDS = 3.0
STOP_TIMEOUT = 40.0       # SIGTERM to exit (the server's grace is 10 s)
START_TIMEOUT = 120.0
FAILING_CODES = ("INTERNAL", "UNKNOWN")
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),  # a connection of its own: any worker
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
DEMO_CAR = demo.demo_cars(1)[0].car_id  # a car the demo data holds
GARBAGE = (b"\xff\xff\xff\xff\xff", b"\x0a\x10abc", b"\x12\x80")  # bad tag, short field, bad length


def server_bounds() -> tuple[float, float]:
    """(the servers' default call deadline, the change feed's freshness bound): the deadline and
    reconciliation interval the harness gives its servers, the poll interval at its default."""
    from server.config import SECTIONS
    defaults = {f"{section}.{f.name}": f.default for section, cls in SECTIONS.items() for f in fields(cls)}
    return DEFAULT_DEADLINE, defaults["cache.change_poll_seconds"] + RECONCILE_SECONDS + FEED_MARGIN


# --- what happened ---------------------------------------------------------------------------------
@dataclass
class Call:
    rpc: str
    started: float
    deadline: float | None
    ended: float = 0.0
    code: str = "OK"
    note: str = ""
    config_versions: list[int] = field(default_factory=list)
    cars: list[tuple[str, float | None]] = field(default_factory=list)  # offered car, price it was priced at


@dataclass
class World:
    """What the chaos did and when (time.monotonic seconds)."""
    car_states: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)  # price; None: gone
    config_acks: list[tuple[float, int]] = field(default_factory=list)
    windows: list[tuple[str, float, float]] = field(default_factory=list)  # (what was away, from, to)
    exits: list[tuple[str, object]] = field(default_factory=list)  # (instance, exit code) of every stop
    crashes: list[str] = field(default_factory=list)
    actions: Counter = field(default_factory=Counter)

    car_changes: dict[str, str] = field(default_factory=dict)  # car -> its last change: sold, repriced, deleted

    def car_changed(self, car_id: str, change: str, before: float | None, after: float | None, at: float) -> None:
        self.car_states.setdefault(car_id, [(-math.inf, before)]).append((at, after))
        self.car_changes[car_id] = change

    def states_between(self, car_id: str, start: float, end: float) -> list[float | None]:
        """The states of the car in effect at some moment of [start, end]."""
        history = self.car_states[car_id]
        return [state for k, (at, state) in enumerate(history)
                if at <= end and (k + 1 == len(history) or history[k + 1][0] > start)]


class Ledger:
    def __init__(self):
        self.calls: list[Call] = []
        self.offered: deque[tuple[str, int]] = deque(maxlen=400)  # (car, term) seen in OK answers
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def saw(self, offers) -> None:
        self.offered.extend((o.car_id, o.term) for o in offers)


class Watchdog:
    """Cancels a call that has run HANG_SLACK past its limit, so that a hung call is recorded
    (late) instead of hanging the run."""

    def __init__(self, default_deadline: float):
        self.default_deadline = default_deadline
        self._calls: dict[int, tuple[grpc.Future, Call]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def limit(self, call: Call) -> float:
        return (self.default_deadline if call.deadline is None else call.deadline) + LATE_MARGIN

    def watch(self, handle, call: Call) -> None:
        with self._lock:
            self._calls[id(handle)] = (handle, call)

    def forget(self, handle) -> None:
        with self._lock:
            self._calls.pop(id(handle), None)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                hung = [(h, c) for h, c in self._calls.values() if now - c.started > self.limit(c) + HANG_SLACK]
            for handle, call in hung:
                call.note = "hung: cancelled by the harness"
                handle.cancel()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the servers -------------------------------------------------------------------------------------
def server_environment(extra: dict[str, str]) -> dict[str, str]:
    """The harness's environment without any TRADEUP_* setting of the user's (the kernel choice
    of the test run excepted), plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("TRADEUP_") or k == "TRADEUP_ENGINE"}
    return {**kept, "PYTHONFAULTHANDLER": "1", **extra}


class Instance:
    """One `python -m server` of PROCESSES workers on its own port; stderr appended to a log file."""

    def __init__(self, name: str, environ: dict[str, str], log: Path):
        self.name = name
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.environ = server_environment({**environ, "TRADEUP_PORT": str(self.port)})
        self.log = log
        self.process: subprocess.Popen | None = None
        self.workers: list[int] = []
        self.stopping = False

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=self.environ,
                                            stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        banner = self.process.stdout.readline() if ready else ""
        if f"({PROCESSES} processes)" not in banner:
            self.kill()
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT} s (see {self.log})")
        self.workers = self.children()
        self.stopping = False

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except FileNotFoundError:
            return []

    def usage(self) -> tuple[int, int]:
        """(threads, RSS in KiB) of the parent and its workers."""
        threads = rss = 0
        for pid in [self.process.pid, *self.children()]:
            try:
                status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            except FileNotFoundError:
                continue
            threads += int(status["Threads"])
            rss += int(status.get("VmRSS", "0 kB").split()[0])
        return threads, rss

    def dead_parts(self) -> list[str]:
        """What of it has died without being asked to: the parent, or any worker."""
        if self.stopping or self.process is None:
            return []
        if self.process.poll() is not None:
            return [f"{self.name} exited by itself with {self.process.returncode}"]
        dead = []
        for pid in self.workers:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                state = "X"
            if state in "ZX":
                dead.append(f"{self.name}: worker {pid} died")
        return dead

    def terminate(self) -> object:
        """SIGTERM; the exit code, or "killed" when it did not exit within STOP_TIMEOUT."""
        self.stopping = True
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return "killed"

    def kill(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            for pid in self.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.kill()
            self.process.wait(timeout=30)


class Prober:
    """The health prober, a process of its own (the callers' threads do not delay it)."""

    def __init__(self, targets: list[str]):
        self.process = subprocess.Popen([sys.executable, "-m", "tests.chaos", "--probe", *targets], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._command("ready")

    def _command(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        answer = self.process.stdout.readline() if ready else ""
        if not answer:
            raise RuntimeError(f"the health prober did not answer {line!r}")
        return answer

    def down(self, index: int) -> None:
        self._command(f"down {index}")

    def up(self, index: int) -> None:
        self._command(f"up {index}")

    def stop(self) -> list[dict]:
        try:
            return json.loads(self._command("stop"))
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


def probe_main(targets: list[str]) -> None:
    """The prober: Check("") on a new connection to every live target every PROBE_INTERVAL.
    Commands on stdin (one answer line each): ready, down I, up I, stop (answered with the figures)."""
    down = [False] * len(targets)
    figures = [{"target": t, "probes": 0, "late": 0, "failed": 0, "max_ms": 0.0, "examples": []} for t in targets]
    stop = threading.Event()

    def probe(index: int) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            if not down[index]:
                problem, began = "", time.monotonic()
                # A new connection each time, as grpc-health-probe makes: every worker process is
                # probed over time. Connecting and the Check are timed, closing is not.
                with grpc.insecure_channel(targets[index], options=CHANNEL_OPTIONS) as channel:
                    try:
                        status = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                        if status != health_pb2.HealthCheckResponse.SERVING:
                            problem = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                    except grpc.RpcError as err:
                        problem = err.code().name
                    took = time.monotonic() - began
                if not down[index]:  # a probe overtaken by a deliberate stop does not count
                    f = figures[index]
                    f["probes"] += 1
                    f["max_ms"] = max(f["max_ms"], took * 1e3)
                    f["failed"] += bool(problem)
                    f["late"] += took > HEALTH_BUDGET
                    if (problem or took > HEALTH_BUDGET) and len(f["examples"]) < 5:
                        f["examples"].append((began, f"{problem or 'SERVING'} in {took * 1e3:.0f} ms"))
            next_at = max(next_at + PROBE_INTERVAL, time.monotonic())
            stop.wait(next_at - time.monotonic())

    threads = [threading.Thread(target=probe, args=(k,), daemon=True) for k in range(len(targets))]
    for line in sys.stdin:
        word, *argument = line.split()
        if word == "ready":
            for target in targets:  # the first channel of a process pays for starting gRPC: not timed
                with grpc.insecure_channel(target) as channel:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            for thread in threads:
                thread.start()
        elif word in ("down", "up"):
            down[int(argument[0])] = word == "down"
        elif word == "stop":
            stop.set()
            for thread in threads:
                thread.join(5)
            print(json.dumps(figures), flush=True)
            return
        print("ok", flush=True)


# --- the run -------------------------------------------------------------------------------------------
def implied_price(offer, cxa_pct: float) -> float | None:
    """The car price an offer was priced at: its opening fee is cxa_pct of the price."""
    return offer.cxa_amount / cxa_pct if cxa_pct else None


class Chaos:
    def __init__(self, workdir: Path, seconds: float, warmup: float, seed: int = 1):
        self.workdir = workdir
        self.seconds = seconds
        self.warmup = warmup
        self.seed = seed
        self.default_deadline, self.feed_bound = server_bounds()
        self.world = World()
        self.ledger = Ledger()
        self.instances: list[Instance] = []
        self.mariadb: MariaDBServer | None = None
        self.redis: RedisServer | None = None
        self.prober: Prober | None = None
        self.watchdog = Watchdog(self.default_deadline)
        self.cxa_pct = 0.0
        self.stop_starting = 0.0
        self.harness_errors: list[str] = []
        self.started = time.monotonic()

    # --- set-up and tear-down
    def set_up(self) -> None:
        self.mariadb = MariaDBServer(self.workdir / "mariadb", free_port())
        self.mariadb.start()
        self.mariadb.create_database("chaos", "chaos", "chaos-password")
        self.db_url = f"mysql://chaos:chaos-password@127.0.0.1:{self.mariadb.port}/chaos"
        self.redis = RedisServer(self.workdir / "redis", free_port())
        self.redis.start()
        subprocess.run([sys.executable, "-m", "server", "seed", "--replace", "--customers", str(len(CUSTOMERS))],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=300,
                       env=server_environment({"TRADEUP_DATABASE_URL": self.db_url, "TRADEUP_LOG_LEVEL": "WARNING"}))
        environ = {"TRADEUP_DATABASE_URL": self.db_url, "TRADEUP_REDIS_URL": self.redis.url,
                   "TRADEUP_PROCESSES": str(PROCESSES), "TRADEUP_HOST": "127.0.0.1",
                   "TRADEUP_ADMIN_TOKEN": ADMIN_TOKEN, "TRADEUP_SEED_DEMO_DATA": "false",
                   "TRADEUP_LOG_LEVEL": "WARNING", "TRADEUP_LOG_HASH_KEY": "chaos-log-hash-key",
                   "TRADEUP_DEFAULT_DEADLINE_SECONDS": str(DEFAULT_DEADLINE),
                   "TRADEUP_RECONCILE_SECONDS": str(RECONCILE_SECONDS)}
        self.instances = [Instance(f"instance {k}", environ, self.workdir / f"instance-{k}.log") for k in range(2)]
        for instance in self.instances:
            instance.start()
        with self.admin(0) as admin:
            self.cxa_pct = admin.get_config()["business"]["fees"]["cxa_pct"]
        self.prober = Prober([i.target for i in self.instances])

    def tear_down(self) -> None:
        """Stop everything still running (also after a failure)."""
        self.stop_starting = 0.0
        self.watchdog.stop()
        if self.prober is not None:
            self.prober.close()
        for instance in self.instances:
            instance.kill()
        if self.redis is not None:
            self.redis.kill()
        if self.mariadb is not None:
            self.mariadb.stop()

    def admin(self, index: int) -> OfferClient:
        return OfferClient(self.instances[index].target, timeout=5, admin_token=ADMIN_TOKEN)

    def sql(self):
        return pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user="chaos", password="chaos-password",
                               database="chaos", autocommit=True, connect_timeout=5, read_timeout=10)

    # --- one call, recorded
    def call(self, rpc: str, deadline: float | None, start: Callable, consume: Callable) -> Call:
        """start() returns the gRPC call (a future or a response iterator); consume(handle, record)
        reads it into the record. The outcome is recorded whatever happens."""
        record = Call(rpc, time.monotonic(), deadline)
        handle = None
        try:
            handle = start()
            # The call ends when its status arrives, not when a slow reader gets round to it.
            handle.add_done_callback(lambda _: setattr(record, "ended", record.ended or time.monotonic()))
            self.watchdog.watch(handle, record)
            consume(handle, record)
        except grpc.RpcError as err:
            record.code = err.code().name
            record.note = record.note or (err.details() or "")[:160]
        except grpc.FutureCancelledError:
            record.code = "CANCELLED"
        finally:
            record.ended = record.ended or time.monotonic()
            if handle is not None:
                self.watchdog.forget(handle)
            self.ledger.add(record)
        return record

    def answer(self, response: pb.GenerateOffersResponse, record: Call) -> None:
        record.config_versions.append(response.summary.config_version)
        offers = [o for g in response.groups for o in g.offers]
        record.cars += [(o.car_id, implied_price(o, self.cxa_pct)) for o in offers]
        self.ledger.saw(offers)

    # --- callers
    def deadline(self, rng: random.Random, low: float = 0.3, high: float = 5.0) -> float | None:
        return None if rng.random() < 0.35 else round(rng.uniform(low, high), 2)

    def request(self, cls, rng: random.Random, **options):
        return cls(customer_id=rng.choice(CUSTOMERS), options=pb.OfferOptions(**options))

    def generate_offers(self, rng, channel) -> None:
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        timeout = self.deadline(rng)
        request = self.request(pb.GenerateOffersRequest, rng, max_offers=rng.choice([10, 50]))
        self.call("GenerateOffers", timeout, lambda: stub.GenerateOffers.future(request, timeout=timeout),
                  lambda future, record: self.answer(future.result(), record))

    def stream_offers(self, rng, channel) -> None:
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        timeout = self.deadline(rng, 1.0, 6.0)
        request = self.request(pb.StreamOffersRequest, rng, max_offers=rng.choice([0, 400]))
        style = rng.choice(["read", "cancel", "slow"])

        def consume(stream, record):
            offers = []
            for message in stream:
                offers += message.offers
                if message.HasField("summary"):
                    record.config_versions.append(message.summary.config_version)
                if style == "cancel":
                    record.note = "cancelled by the caller"
                    stream.cancel()
                elif style == "slow":
                    time.sleep(0.3)
            record.cars += [(o.car_id, implied_price(o, self.cxa_pct)) for o in offers]
            self.ledger.saw(offers)
        self.call(f"StreamOffers ({style})", timeout, lambda: stub.StreamOffers(request, timeout=timeout), consume)

    def bulk(self, rng, channel, idle: float | None = None, rpc: str = "GenerateOffersBulk",
             timeout: float | None = None) -> None:
        """`idle` seconds without sending anything first (None: never send, never half-close)."""
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        requests = [self.request(pb.GenerateOffersBulkRequest, rng, max_offers=10) for _ in range(rng.randint(1, 4))]
        requests.append(pb.GenerateOffersBulkRequest(customer_id="C99999"))  # a per-customer NOT_FOUND
        finished = threading.Event()

        def send():
            if idle is None or finished.wait(idle):
                finished.wait()
                return
            yield from requests

        def consume(stream, record):
            for item in stream:
                if item.HasField("offers"):
                    self.answer(item.offers, record)
                elif item.error.code in FAILING_CODES:
                    record.note = f"customer {item.customer_id}: {item.error.code} {item.error.message}"[:160]
                    record.code = f"OK with a per-customer {item.error.code}"
        try:
            self.call(rpc, timeout, lambda: stub.GenerateOffersBulk(send(), timeout=timeout), consume)
        finally:
            finished.set()

    def bulk_caller(self, rng, channel) -> None:
        idle = rng.choice([0.0, 0.0, 2.0, 5.0])
        self.bulk(rng, channel, idle, "GenerateOffersBulk" + (f" (idle {idle:.0f} s)" if idle else ""),
                  self.deadline(rng, 1.0, 8.0))

    def subsidy_or_amortization(self, rng, channel) -> None:
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        timeout = self.deadline(rng, 0.5, 5.0)
        if rng.random() < 0.5 or not self.ledger.offered:
            request = pb.FindMinimumSubsidyRequest(customer_id=rng.choice(CUSTOMERS), max_cars=rng.choice([5, 20]))
            cancel = rng.random() < 0.3

            def consume(stream, record):
                for message in stream:
                    record.cars += [(r.car_id, None) for r in message.results]
                    if cancel:
                        record.note = "cancelled by the caller"
                        stream.cancel()
            self.call("FindMinimumSubsidy", timeout, lambda: stub.FindMinimumSubsidy(request, timeout=timeout),
                      consume)
            return
        car_id, term = rng.choice(list(self.ledger.offered))
        request = pb.GetAmortizationTableRequest(customer_id=rng.choice(CUSTOMERS), car_id=car_id, term=term)

        def consume(future, record):
            offer = future.result().offer
            record.cars.append((offer.car_id, implied_price(offer, self.cxa_pct)))
        self.call("GetAmortizationTable", timeout, lambda: stub.GetAmortizationTable.future(request, timeout=timeout),
                  consume)

    def watch(self, rng, channel) -> None:
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        """A deadline ends it, or the caller cancels after a few seconds; slow readers lag 1 s a message."""
        timeout = self.deadline(rng, 2.0, 8.0)
        request = self.request(pb.WatchOffersRequest, rng, max_offers=20)
        slow = rng.random() < 0.4
        cancel_at = time.monotonic() + rng.uniform(2.0, 8.0)

        def consume(stream, record):
            canceller = threading.Timer(max(0.0, cancel_at - time.monotonic()), stream.cancel)
            if timeout is None:
                record.note = "cancelled by the caller"
                canceller.start()
            try:
                for message in stream:
                    if message.reason == pb.WATCH_REASON_INITIAL:
                        self.answer(message.answer, record)  # only the first answer is checked for freshness
                    if slow:
                        time.sleep(1.0)
            finally:
                canceller.cancel()
        self.call("WatchOffers" + (" (slow reader)" if slow else ""), timeout,
                  lambda: stub.WatchOffers(request, timeout=timeout), consume)

    def bad_input(self, rng, channel) -> None:
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        timeout = self.deadline(rng, 1.0, 5.0)
        profile = pb.CustomerProfile(current_monthly_payment=-1, outstanding_balance=1, current_car_price=1,
                                     current_car_year=2018, current_car_km=1, risk_profile_name="A1")
        unary = {
            "GenerateOffers": (stub.GenerateOffers, [
                pb.GenerateOffersRequest(), pb.GenerateOffersRequest(profile=profile),
                pb.GenerateOffersRequest(customer_id="C00001", options=pb.OfferOptions(terms=[7])),
                pb.GenerateOffersRequest(customer_id="C00001", options=pb.OfferOptions(max_cars=99999)),
                pb.GenerateOffersRequest(customer_id="C00001", overrides=pb.PricingOverrides(service_fee_pct=2)),
                pb.GenerateOffersRequest(customer_id="C99999")]),
            "GetAmortizationTable": (stub.GetAmortizationTable, [
                pb.GetAmortizationTableRequest(customer_id="C00001", car_id="NO-SUCH-CAR", term=24),
                pb.GetAmortizationTableRequest(customer_id="C00001", car_id=DEMO_CAR, term=13)]),
        }
        kind = rng.choice(["GenerateOffers", "GetAmortizationTable", "garbage", "subsidy"])
        if kind == "garbage":
            method = rng.choice(["/tradeup.v1.OfferService/GenerateOffers", "/tradeup.v1.OfferService/GetAmortizationTable"])
            payload = rng.choice(GARBAGE)
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            self.call(f"{method.rsplit('/', 1)[1]} [garbage bytes]", timeout,
                      lambda: call.future(payload, timeout=timeout), lambda future, record: future.result())
        elif kind == "subsidy":
            request = pb.FindMinimumSubsidyRequest(customer_id="C00001", car_ids=[f"X{k}" for k in range(2001)])
            self.call("FindMinimumSubsidy [bad input]", timeout,
                      lambda: stub.FindMinimumSubsidy(request, timeout=timeout), lambda stream, record: list(stream))
        else:
            method, requests = unary[kind]
            request = rng.choice(requests)
            self.call(f"{kind} [bad input]", timeout, lambda: method.future(request, timeout=timeout),
                      lambda future, record: future.result())

    def retrying_client(self, rng, client: OfferClient) -> None:
        request = self.request(pb.GenerateOffersRequest, rng, max_offers=10)
        self.call("GenerateOffers (retrying OfferClient)", client.timeout,
                  lambda: client.offers.GenerateOffers.future(request, timeout=client.timeout),
                  lambda future, record: self.answer(future.result(), record))

    def idle_bulk(self, rng, channel) -> None:
        """A bulk stream without a deadline that never sends and never half-closes: the server's
        default deadline must end it. Started only while it can end before the run does."""
        if time.monotonic() + self.default_deadline + LATE_MARGIN + HANG_SLACK + 1 < self.stop_starting:
            self.bulk(rng, channel, None, "GenerateOffersBulk (never half-closed)")
        else:
            time.sleep(0.5)

    # --- the load
    def load(self, seconds: float, with_idle_streams: bool) -> list[threading.Thread]:
        self.stop_starting = time.monotonic() + seconds
        scenarios = [self.generate_offers, self.generate_offers, self.generate_offers, self.stream_offers,
                     self.bulk_caller, self.subsidy_or_amortization, self.subsidy_or_amortization, self.watch,
                     self.watch, self.bad_input, "retrying"]
        if with_idle_streams:
            scenarios.append(self.idle_bulk)
        threads = []
        for k, scenario in enumerate(scenarios):
            thread = threading.Thread(target=self._loop, args=(scenario, random.Random(self.seed * 1000 + k)),
                                      name=f"caller-{k}", daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def _loop(self, scenario, rng: random.Random) -> None:
        if scenario == "retrying":  # one client over both instances, round robin
            client = OfferClient("ipv4:" + ",".join(i.target for i in self.instances), timeout=5,
                                 options=[("grpc.lb_policy_name", "round_robin"), *CHANNEL_OPTIONS[1:]])
            channels = [client.channel]
            scenario = lambda rng, channel: self.retrying_client(rng, client)  # noqa: E731
        else:
            channels = [grpc.insecure_channel(i.target, options=CHANNEL_OPTIONS) for i in self.instances]
        try:
            while time.monotonic() < self.stop_starting:
                scenario(rng, rng.choice(channels))
                time.sleep(rng.uniform(0.02, 0.15))
        except Exception as exc:  # a bug of the harness: reported, never silently passing
            self.harness_errors.append(f"{threading.current_thread().name}: {exc!r}")
        finally:
            for channel in channels:
                channel.close()

    def join(self, threads: list[threading.Thread]) -> None:
        """Wait for the callers' last calls: each ends within its limit, or the watchdog cancels it."""
        until = time.monotonic() + self.default_deadline + LATE_MARGIN + HANG_SLACK + 10
        for thread in threads:
            thread.join(max(0.0, until - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.world.crashes.append(f"callers still running after every limit: {', '.join(stuck)}")

    # --- chaos
    def chaos(self, until: float) -> None:
        rng = random.Random(self.seed)
        gap = max(3.0, self.feed_bound + 0.5)  # a car change reaches the feed before the database goes away
        cycle = ["parameter", "sell", "redis kill", "instance restart", "delete", "parameter", "mariadb restart",
                 "reprice", "redis start", "sell", "parameter", "delete", "reprice"]
        step = 0
        while time.monotonic() + gap < until:
            action = cycle[step % len(cycle)]
            getattr(self, "chaos_" + action.replace(" ", "_"))(rng, step // len(cycle))
            self.world.actions[action] += 1
            step += 1
            time.sleep(gap)
        if self.redis.process is None:
            self.chaos_redis_start(rng, 0)

    def chaos_parameter(self, rng, round_: int) -> None:
        fee = round(0.02 + 0.001 * (self.world.actions["parameter"] % 30), 4)
        struct = struct_pb2.Struct()
        struct.update({"fees": {"service_fee_pct": fee}})
        index = rng.randrange(len(self.instances))
        with self.admin(index) as admin:
            def consume(future, record):
                version = future.result().config_version
                self.world.config_acks.append((time.monotonic(), version))
            request = admin_pb2.UpdateBusinessParametersRequest(changes=struct, changed_by="chaos")
            self.call("UpdateBusinessParameters (chaos)", 5.0, lambda: admin.admin.UpdateBusinessParameters.future(
                request, timeout=5.0, metadata=admin._admin_metadata()), consume)

    def victim(self, rng) -> str | None:
        gone = {car for car, states in self.world.car_states.items() if states[-1][1] is None}
        candidates = sorted({car for car, _ in self.ledger.offered} - gone)
        return rng.choice(candidates) if candidates else None

    def _change_car(self, rng, change: str, statement: str) -> None:
        car_id = self.victim(rng)
        if car_id is None:
            return
        with self.sql() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT price, available FROM inventory WHERE car_id = %s", (car_id,))
            price, available = cursor.fetchone()
            cursor.execute(statement, (car_id,))
            cursor.execute("SELECT price, available FROM inventory WHERE car_id = %s", (car_id,))
            row = cursor.fetchone()
        after = float(row[0]) if row and row[1] else None
        self.world.car_changed(car_id, change, float(price) if available else None, after, time.monotonic())

    def chaos_sell(self, rng, round_: int) -> None:
        self._change_car(rng, "sold", "UPDATE inventory SET available = 0 WHERE car_id = %s")

    def chaos_reprice(self, rng, round_: int) -> None:
        self._change_car(rng, "repriced", "UPDATE inventory SET regular_price = regular_price + 997, promotion_price = NULL "
                              "WHERE car_id = %s")

    def chaos_delete(self, rng, round_: int) -> None:
        self._change_car(rng, "deleted", "DELETE FROM inventory WHERE car_id = %s")

    def chaos_mariadb_restart(self, rng, round_: int) -> None:
        began = time.monotonic()
        self.mariadb.restart()
        self.world.windows.append(("MariaDB", began, time.monotonic()))

    def chaos_redis_kill(self, rng, round_: int) -> None:
        self.redis.kill()
        self.redis_down_since = time.monotonic()

    def chaos_redis_start(self, rng, round_: int) -> None:
        self.redis.start()
        self.world.windows.append(("Redis", self.redis_down_since, time.monotonic()))

    def chaos_instance_restart(self, rng, round_: int) -> None:
        index = round_ % len(self.instances)
        instance = self.instances[index]
        self.prober.down(index)
        began = time.monotonic()
        self.world.exits.append((f"{instance.name} (SIGTERM during the run)", instance.terminate()))
        instance.start()
        self.world.windows.append((instance.name, began, time.monotonic()))
        self.prober.up(index)

    # --- the whole run
    def run(self) -> "Report":
        self.set_up()
        # Warm every RPC on each instance before the baseline, idle streams too: the thread pools
        # grow to what the calls of the run hold at once (they never shrink), so the baseline is
        # taken after the same kinds of load as the run's.
        for idle_streams in (False, True):
            self.join(self.load(self.warmup / 2, with_idle_streams=idle_streams))
        time.sleep(SETTLE_SECONDS)
        baseline = [i.usage() for i in self.instances]
        self.chaos_started = time.monotonic()
        until = self.chaos_started + self.seconds
        callers = self.load(self.seconds, with_idle_streams=True)
        monitor_stop = threading.Event()
        peaks = [list(b) for b in baseline]
        monitor = threading.Thread(target=self._monitor, args=(monitor_stop, peaks), daemon=True)
        monitor.start()
        try:
            self.chaos(until)
            self.join(callers)
        finally:
            monitor_stop.set()
            monitor.join(5)
        time.sleep(SETTLE_SECONDS)
        final = [i.usage() for i in self.instances]
        health = self.prober.stop()
        for instance in self.instances:
            self.world.exits.append((f"{instance.name} (SIGTERM at the end)", instance.terminate()))
        return Report(self, baseline, peaks, final, health, time.monotonic() - self.started)

    def _monitor(self, stop: threading.Event, peaks: list[list[int]]) -> None:
        seen = set()
        while not stop.wait(0.5):
            for k, instance in enumerate(self.instances):
                for death in instance.dead_parts():
                    if death not in seen:
                        seen.add(death)
                        self.world.crashes.append(f"t={time.monotonic() - self.chaos_started:.1f}s {death}")
                if not instance.stopping:
                    threads, rss = instance.usage()
                    peaks[k] = [max(peaks[k][0], threads), max(peaks[k][1], rss)]


# --- the verdict -------------------------------------------------------------------------------------
class Report:
    def __init__(self, chaos: Chaos, baseline, peaks, final, health: list[dict], duration: float):
        self.chaos, self.world, self.calls = chaos, chaos.world, chaos.ledger.calls
        self.baseline, self.peaks, self.final, self.health = baseline, peaks, final, health
        self.duration = duration
        self.checks: list[tuple[str, bool, str]] = []  # (what, passed, figures or the first offenders)
        self._judge()

    @property
    def failures(self) -> list[str]:
        return [f"{what}: {detail}" for what, passed, detail in self.checks if not passed]

    def _check(self, what: str, offenders: list[str], figures: str = "", summary: str = "") -> None:
        """`figures` are shown when it passes; `summary` and the first offenders when it fails."""
        detail = figures if not offenders else f"{len(offenders)}{summary}; " + "; ".join(offenders[:3])
        self.checks.append((what, not offenders, detail))

    def _at(self, moment: float) -> str:
        return f"t={moment - self.chaos.chaos_started:.1f}s"

    def _judge(self) -> None:
        chaos, world = self.chaos, self.world
        failing = [c for c in self.calls if c.code in FAILING_CODES or c.code.startswith("OK with a per-customer")]
        self._check("INTERNAL/UNKNOWN status codes", [f"{c.rpc} {c.code} {c.note}" for c in failing], "0")
        crashes = list(world.crashes)
        for instance in chaos.instances:
            text = instance.log.read_text(errors="replace") if instance.log.exists() else ""
            crashes += [f"{instance.name}: 'Fatal Python error' in its log"] * text.count("Fatal Python error")
        crashes += [f"{name} exited with {code}" for name, code in world.exits if code != 0]
        self._check("server crashes and non-zero exits", crashes,
                    f"0 ({len(world.exits)} SIGTERM stops, all exit 0)")
        # A DEADLINE_EXCEEDED at a deadline the caller set comes from the caller's own gRPC timer:
        # no answer of the server's can arrive after it, so its lateness is the harness's own
        # scheduling on a loaded machine and is shown apart, not judged.
        timer = [c for c in self.calls if c.deadline is not None and c.code == "DEADLINE_EXCEEDED"
                 and c.ended - c.started <= c.deadline + HANG_SLACK]
        judged = [c for c in self.calls if c not in timer]
        overrun = {id(c): (c.ended - c.started) - chaos.watchdog.limit(c) + LATE_MARGIN for c in self.calls}
        late = sorted((c for c in judged if overrun[id(c)] > LATE_MARGIN), key=lambda c: -overrun[id(c)])
        self._check(f"calls ended later than deadline + {LATE_MARGIN * 1e3:.0f} ms (default deadline "
                    f"{chaos.default_deadline:.0f} s)",
                    [f"{c.rpc} {'no deadline' if c.deadline is None else f'deadline {c.deadline} s'} took "
                     f"{c.ended - c.started:.2f} s ({c.code}{', ' + c.note if c.note else ''})" for c in late],
                    f"0 (closest {max((overrun[id(c)] for c in judged), default=0) * 1e3:+.0f} ms; {len(timer)} "
                    f"ended by the caller's own deadline timer, at most "
                    f"{max((overrun[id(c)] for c in timer), default=0) * 1e3:+.0f} ms)")
        unhealthy = [f"{h['target']} {h['failed']} failed, {h['late']} late of {h['probes']} (max {h['max_ms']:.0f} ms; "
                     + ", ".join(f"{self._at(at)} {what}" for at, what in h["examples"][:3]) + ")"
                     for h in self.health if h["failed"] or h["late"]]
        self._check(f"health Check('') not SERVING within {HEALTH_BUDGET * 1e3:.0f} ms", unhealthy,
                    ", ".join(f"{h['probes']} probes max {h['max_ms']:.0f} ms" for h in self.health))
        stale_cars, stale_config, stale_by = [], [], Counter()
        for c in self.calls:
            if not c.code.startswith("OK"):
                continue
            required = max((v for at, v in world.config_acks if at < c.started - PARAMETER_BOUND), default=0)
            if any(v < required for v in c.config_versions):
                stale_config.append(f"{self._at(c.started)} {c.rpc} config_version {min(c.config_versions)} < "
                                    f"{required}")
            for car_id, price in c.cars:
                if car_id not in world.car_states:
                    continue
                states = world.states_between(car_id, c.started - chaos.feed_bound, c.ended)
                if not any(s is not None and (price is None or math.isclose(s, price, rel_tol=1e-9)) for s in states):
                    changed = [at for at, _ in world.car_states[car_id][1:] if at <= c.started][-1:]
                    age = f"{c.started - changed[0]:.1f} s before the call" if changed else ""
                    stale_by[world.car_changes[car_id]] += 1
                    stale_cars.append(f"{self._at(c.started)} {c.rpc} offered {car_id} at "
                                      f"{'?' if price is None else f'{price:,.2f}'} ({world.car_changes[car_id]} "
                                      f"{age}; now "
                                      f"{'gone' if states[-1] is None else f'{states[-1]:,.2f}'})")
        changes = len(world.car_states)
        self._check(f"OK answers with a car changed more than {chaos.feed_bound:.1f} s before", stale_cars,
                    f"0 ({changes} cars changed)",
                    " (" + ", ".join(f"{n} of cars {what}" for what, n in sorted(stale_by.items())) + ")")
        self._check(f"OK answers without a parameter acknowledged {PARAMETER_BOUND:.0f} s before", stale_config,
                    f"0 ({len(world.config_acks)} changes)")
        outages = [(a, b) for what, a, b in world.windows if what == "MariaDB"]
        away = [(a, b) for what, a, b in world.windows if what.startswith("instance")]
        retried = [c for c in self.calls if c.rpc.startswith("GenerateOffers (retrying")
                   and any(a <= c.started and c.ended <= b for a, b in away)
                   and not any(c.started < b and a < c.ended for a, b in outages)]
        self._check("retrying client not OK while one instance was away",
                    [f"{self._at(c.started)} {c.code} {c.note}" for c in retried if c.code != "OK"],
                    f"0 of {len(retried)}")
        grown = []
        for instance, (threads0, rss0), (threads1, rss1) in zip(chaos.instances, self.baseline, self.final):
            if threads1 > threads0 + max(threads0 * RESOURCE_TOLERANCE, POOL_THREADS_SLACK * PROCESSES):
                grown.append(f"{instance.name} threads {threads0} -> {threads1}")
            if rss1 > rss0 * (1 + RESOURCE_TOLERANCE):
                grown.append(f"{instance.name} RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB")
        self._check("errors of the harness itself", chaos.harness_errors, "0")
        self._check(f"threads more than {RESOURCE_TOLERANCE:.0%} or {POOL_THREADS_SLACK} a process, or RSS more "
                    f"than {RESOURCE_TOLERANCE:.0%}, above the level after warm-up", grown, "0")

    def text(self) -> str:
        rows = Counter((c.rpc, c.code) for c in self.calls)
        rpcs = sorted({rpc for rpc, _ in rows})
        codes = sorted({code for _, code in rows}, key=lambda code: (code != "OK", code))
        width = max(len(r) for r in rpcs) + 1
        columns = [max(len(code), 5) + 2 for code in codes]
        lines = [f"chaos run: {self.chaos.seconds:.0f} s of chaos after {self.chaos.warmup:.0f} s of warm-up; "
                 f"{self.duration:.0f} s in all; {len(self.calls)} calls",
                 "", "status codes by RPC:",
                 "".ljust(width) + "".join(code.rjust(w) for code, w in zip(codes, columns))]
        for rpc in rpcs:
            lines.append(rpc.ljust(width) + "".join(str(rows[(rpc, code)] or "").rjust(w)
                                                    for code, w in zip(codes, columns)))
        world = self.world
        lines += ["", "chaos: " + ", ".join(f"{what} x{n}" for what, n in sorted(world.actions.items())),
                  "away: " + ", ".join(f"{what} {b - a:.1f} s" for what, a, b in world.windows),
                  "threads / RSS MiB per instance (after warm-up -> peak -> after the run): " + "; ".join(
                      f"{i.name} {b[0]} -> {p[0]} -> {f[0]} / {b[1] / 1024:.0f} -> {p[1] / 1024:.0f} -> {f[1] / 1024:.0f}"
                      for i, b, p, f in zip(self.chaos.instances, self.baseline, self.peaks, self.final)),
                  "", "checks:"]
        width = max(len(what) for what, _, _ in self.checks) + 2
        lines += [f"  {'PASS' if passed else 'FAIL'}  {what.ljust(width)} {detail}" for what, passed, detail in self.checks]
        lines.append(f"{sum(not p for _, p, _ in self.checks)} of {len(self.checks)} checks failed")
        return "\n".join(lines)


def available() -> str | None:
    """Why the chaos run cannot run here, or None."""
    if not binaries_available():
        return "MariaDB is not installed (mariadbd, mariadb-install-db)"
    if redis_binary() is None:
        return "redis-server is not installed"
    return None


def run(seconds: float, workdir: Path, warmup: float = 6.0, seed: int = 1) -> Report:
    chaos = Chaos(workdir, seconds, warmup, seed)
    try:
        return chaos.run()
    finally:
        chaos.tear_down()


def main() -> int:
    if sys.argv[1:2] == ["--probe"]:
        probe_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="chaos duration after the warm-up")
    parser.add_argument("--warmup", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    why = available()
    if why:
        sys.exit(f"the chaos run needs MariaDB and Redis: {why}")
    with tempfile.TemporaryDirectory(prefix="tradeup-chaos-") as workdir:
        report = run(args.seconds, Path(workdir), args.warmup, args.seed)
        print(report.text())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
