"""WatchOffers figures (`make bench-watch`), all measured in this run, on the embedded SQLite
database with the demo data, servers as real processes:

1. change -> first watcher's message: a parameter changed through server A reaches a watcher
   on server B (polling only, then with Redis push), and a car sold by a plain database write
   (polling; with Redis the writer also publishes on the change channel), median of --rounds;
2. --watchers streams on one process over --customers customers: idle CPU of that process
   from /proc (utime + stime over --idle-seconds, as % of one core), its threads and memory;
   then one car sold: how many watchers got a delta and when the first and the last arrived,
   and a GenerateOffers served meanwhile.

Quick check of the tooling: python -m tests.bench.bench_watch --watchers 20 --customers 5 --rounds 1 --idle-seconds 1
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from client import OfferClient  # noqa: E402
from conftest import free_port, make_settings  # noqa: E402
from protos.tradeup.v1 import offers_pb2 as pb, offers_pb2_grpc  # noqa: E402
from redis_server import RedisServer, binary as redis_binary  # noqa: E402

TOKEN = "bench-admin-token"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FEES = (round(0.02 + 0.0005 * k, 4) for k in itertools.count())  # a new value for every change


class ServerProcess:
    def __init__(self, sqlite: Path, **extra):
        self.port = free_port()
        env = {**os.environ, "TRADEUP_SQLITE_PATH": str(sqlite), "TRADEUP_PORT": str(self.port),
               "TRADEUP_HOST": "127.0.0.1", "TRADEUP_LOG_LEVEL": "WARNING", "TRADEUP_ADMIN_TOKEN": TOKEN,
               **{k: str(v) for k, v in extra.items()}}
        self.process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        if "listening" not in self.process.stdout.readline():
            self.stop()
            raise RuntimeError("the server did not start")
        self.target = f"127.0.0.1:{self.port}"
        self.client = OfferClient(self.target, timeout=60, admin_token=TOKEN)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def status(self, name: str) -> str:
        line = next(x for x in Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
                    if x.startswith(name + ":"))
        return line.split(":", 1)[1].strip()

    def stop(self) -> None:
        if getattr(self, "client", None):
            self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Watchers:
    """Many WatchOffers streams on a few connections, read by one event loop on its own thread."""

    def __init__(self, target: str, customers: list[str], connections: int = 8):
        self.loop = asyncio.new_event_loop()
        self.target, self.customers, self.connections = target, customers, connections
        self.initial: dict[int, pb.WatchOffersResponse] = {}
        self.arrivals: list[tuple[float, int, int]] = []  # (perf_counter, watcher, reason) after INITIAL
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=600)

    async def _open(self) -> None:
        self.channels = [grpc.aio.insecure_channel(self.target, options=[("grpc.channel_id", k),
                                                                         ("grpc.max_receive_message_length", 1 << 26)])
                         for k in range(self.connections)]
        stubs = [offers_pb2_grpc.OfferServiceStub(c) for c in self.channels]
        self.tasks = [asyncio.create_task(self._watch(k, stubs[k % len(stubs)], customer))
                      for k, customer in enumerate(self.customers)]
        while len(self.initial) < len(self.customers):
            await asyncio.sleep(0.05)
            if any(t.done() for t in self.tasks):
                for t in self.tasks:
                    if t.done() and t.exception():
                        raise t.exception()

    async def _watch(self, k: int, stub, customer: str) -> None:
        call = stub.WatchOffers(pb.WatchOffersRequest(customer_id=customer))
        try:
            async for message in call:
                if message.reason == pb.WATCH_REASON_INITIAL:
                    self.initial[k] = message
                else:
                    self.arrivals.append((time.perf_counter(), k, message.reason))
        except grpc.aio.AioRpcError as err:
            if err.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                raise

    def wait_arrivals(self, count: int, timeout: float) -> list[tuple[float, int, int]]:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.arrivals)

    def close(self) -> None:
        async def close():
            for task in self.tasks:
                task.cancel()
            for channel in self.channels:
                await channel.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def cars_offered(message: pb.WatchOffersResponse) -> set[str]:
    return {offer.car_id for group in message.answer.groups for offer in group.offers}


def sell(sqlite: Path, car_id: str, redis_url: str | None) -> float:
    """Mark the car sold by a database write (as the stock system would); with Redis, publish as a
    fleet-aware writer does. Returns perf_counter right after the write."""
    from server.app import open_repository
    repository = open_repository(make_settings({"TRADEUP_SQLITE_PATH": str(sqlite)}))
    try:
        repository.set_car_available(car_id, False)
        written = time.perf_counter()
        if redis_url:
            import redis
            state = repository.change_state()
            redis.Redis.from_url(redis_url).publish("tradeup:changes",
                                                    json.dumps({"kind": "inventory", "version": state.inventory_version}))
        return written
    finally:
        repository.database.close()


def latency(sqlite: Path, rounds: int, redis_url: str | None) -> None:
    extra = {"TRADEUP_REDIS_URL": redis_url} if redis_url else {}
    a, b = ServerProcess(sqlite, **extra), ServerProcess(sqlite, **extra)
    watchers = None
    try:
        watchers = Watchers(b.target, ["C00001"], connections=1)
        parameter, sold = [], []
        for k in range(rounds):
            seen = len(watchers.arrivals)
            started = time.perf_counter()
            a.client.update_business_parameters({"fees": {"service_fee_pct": next(FEES)}})
            arrivals = watchers.wait_arrivals(seen + 1, 30)
            if len(arrivals) > seen:
                parameter.append(arrivals[seen][0] - started)
            time.sleep(0.3)
            seen = len(watchers.arrivals)
            car = sorted(cars_offered(watchers.initial[0]))[k]
            written = sell(sqlite, car, redis_url)
            arrivals = watchers.wait_arrivals(seen + 1, 30)
            if len(arrivals) > seen:
                sold.append(arrivals[seen][0] - written)
            time.sleep(0.3)
        mode = "redis push" if redis_url else "polling (0.5 s)"
        for name, values in (("parameter via A -> watcher on B", parameter), ("car sold in the database", sold)):
            text = f"median {statistics.median(values) * 1e3:7.1f} ms, max {max(values) * 1e3:7.1f} ms" \
                if values else "no message"
            print(f"  {mode:16} {name:34} {text} ({len(values)}/{rounds} rounds)")
    finally:
        if watchers:
            watchers.close()
        a.stop()
        b.stop()


def scale(sqlite: Path, count: int, customers: int, idle_seconds: float, redis_url: str | None) -> None:
    extra = {"TRADEUP_REDIS_URL": redis_url} if redis_url else {}
    server = ServerProcess(sqlite, TRADEUP_MAX_WATCHERS=max(count, 1000), **extra)
    watchers = None
    try:
        ids = [f"C{k % customers + 1:05d}" for k in range(count)]
        started = time.perf_counter()
        watchers = Watchers(server.target, ids)
        print(f"  {count} watchers over {customers} customers open in {time.perf_counter() - started:.1f} s; "
              f"server threads {server.status('Threads')}, RSS {server.status('VmRSS')}")
        time.sleep(1.0)
        before, wall = server.cpu_seconds(), time.perf_counter()
        time.sleep(idle_seconds)
        used, wall = server.cpu_seconds() - before, time.perf_counter() - wall
        print(f"  idle: {used / wall * 100:.2f} % of one core over {wall:.1f} s (goal <= 10 %)")
        counts = collections.Counter(car for m in watchers.initial.values() for car in cars_offered(m))
        car, holders = counts.most_common(1)[0]
        seen = len(watchers.arrivals)
        written = sell(sqlite, car, redis_url)
        arrivals = watchers.wait_arrivals(seen + holders, 30)[seen:]
        time.sleep(2.0)  # watchers whose answer changed without holding the car
        arrivals = watchers.arrivals[seen:]
        call_started = time.perf_counter()
        server.client.generate_offers(customer_id="C00001", max_offers=10)
        call_ms = (time.perf_counter() - call_started) * 1e3
        if arrivals:
            first, last = arrivals[0][0] - written, max(t for t, _, _ in arrivals) - written
            print(f"  one car sold ({car}, offered to {holders} watchers): {len(arrivals)} deltas, first after "
                  f"{first * 1e3:.0f} ms, last after {last * 1e3:.0f} ms (goal: all <= 1 s); "
                  f"fan-out {(last - first) * 1e3:.0f} ms")
        else:
            print(f"  one car sold ({car}, offered to {holders} watchers): no delta within 30 s")
        print(f"  GenerateOffers beside them: {call_ms:.1f} ms")
    finally:
        if watchers:
            watchers.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--customers", type=int, default=250, help="distinct customers among the watchers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as work:
        workdir = Path(work)
        sqlite = workdir / "bench.db"
        subprocess.run([sys.executable, "-m", "server", "seed", "--replace"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "TRADEUP_SQLITE_PATH": str(sqlite),
                                                       "TRADEUP_LOG_LEVEL": "WARNING"})
        redis = None
        if redis_binary():
            redis = RedisServer(workdir / "redis", free_port())
            redis.start()
        else:
            print("redis-server not installed: the Redis rows are left out")
        try:
            print("1. change -> first watcher's message (two server processes, one database)")
            latency(sqlite, args.rounds, None)
            if redis:
                latency(sqlite, args.rounds, redis.url)
            print(f"2. {args.watchers} watchers on one process")
            scale(sqlite, args.watchers, args.customers, args.idle_seconds, redis.url if redis else None)
        finally:
            if redis:
                redis.kill()


if __name__ == "__main__":
    main()
