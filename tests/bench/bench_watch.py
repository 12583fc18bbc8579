"""WatchOffers figures (`make bench-watch`), all measured in this run, on the embedded SQLite
database with the demo data, servers as real processes:

1. change -> first watcher's message: a parameter changed through server A reaches a watcher
   on server B (polling only, then with Redis push), and a car sold by a plain database write
   (polling; with Redis the writer also publishes on the change channel), median of --rounds;
2. --watchers streams on one process over --customers customers, opened by a client process of
   its own (grpc.aio, --connections channels): the time to open them all; idle CPU of the
   server from /proc (utime + stime over --idle-seconds, as % of one core), its threads and RSS;
   one car sold: how many of the watchers it concerns (those offered it) got their delta, and
   when the last did; the median GenerateOffers beside the open watchers against the same call
   on the quiet server. Each figure against its goal.

Quick check of the tooling: python -m tests.bench.bench_watch --watchers 20 --customers 5 --rounds 1 --idle-seconds 1
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from client import OfferClient  # noqa: E402
from conftest import free_port, make_settings  # noqa: E402
from redis_server import RedisServer, binary as redis_binary  # noqa: E402
from watchers import Watchers, cars_offered  # noqa: E402

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


def serve_watchers(pipe, target: str, customers: list[str], connections: int) -> None:
    """The client process of WatcherProcess: opens the watchers, then answers the parent's requests."""
    started = time.monotonic()
    watchers = Watchers(target, customers, connections)
    opened = time.monotonic() - started
    holders = collections.defaultdict(set)
    for k, message in watchers.initial.items():
        for car in cars_offered(message):
            holders[car].add(k)
    car, concerned = max(holders.items(), key=lambda item: len(item[1]))
    pipe.send({"opened": opened, "car": car, "concerned": len(concerned)})
    while (request := pipe.recv()) is not None:  # ("deltas", since, timeout): arrivals after `since`
        _, since, timeout = request
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and \
                not concerned <= {k for t, k, _ in watchers.arrivals if t >= since}:
            time.sleep(0.01)
        time.sleep(0.5)  # the watchers whose answer changed without holding the car
        arrivals = [(t, k) for t, k, _ in watchers.arrivals if t >= since]
        reached = [t for t, k in arrivals if k in concerned]
        pipe.send({"deltas": len(arrivals), "reached": len(set(k for _, k in arrivals) & concerned),
                   "last": max(reached, default=None), "last_any": max((t for t, _ in arrivals), default=None)})
    watchers.close()


class WatcherProcess:
    """Watchers in a process of their own, so that reading 10,000 streams does not share the
    bench's interpreter (nor its GIL) with the measurements."""

    def __init__(self, target: str, customers: list[str], connections: int):
        context = multiprocessing.get_context("spawn")  # no fork after grpc started here
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=serve_watchers, args=(child, target, customers, connections),
                                       daemon=True)
        self.process.start()

    def receive(self, timeout: float) -> dict:
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"the watcher process did not answer within {timeout} s")
        return self.pipe.recv()

    def close(self) -> None:
        if self.process.is_alive():
            self.pipe.send(None)
            self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()


def sell(sqlite: Path, car_id: str, redis_url: str | None) -> float:
    """Mark the car sold by a database write (as the stock system would); with Redis, publish as a
    fleet-aware writer does. Returns time.monotonic() right after the write."""
    from server.app import open_repository
    repository = open_repository(make_settings({"TRADEUP_SQLITE_PATH": str(sqlite)}))
    try:
        repository.set_car_available(car_id, False)
        written = time.monotonic()
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
            started = time.monotonic()
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


def median_call_ms(client: OfferClient, calls: int = 20) -> float:
    """The median GenerateOffers, one customer, after one call to warm up."""
    client.generate_offers(customer_id="C00001", max_offers=10)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.generate_offers(customer_id="C00001", max_offers=10)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def scale(sqlite: Path, count: int, customers: int, idle_seconds: float, connections: int,
          redis_url: str | None) -> None:
    extra = {"TRADEUP_REDIS_URL": redis_url} if redis_url else {}
    # One caller opens them all (one peer address): its stream limit is raised with the process's.
    server = ServerProcess(sqlite, TRADEUP_MAX_WATCHERS=max(count, 1000), TRADEUP_MAX_STREAMS_PER_CALLER=max(count, 256),
                           **extra)
    watchers = None
    try:
        quiet_ms = median_call_ms(server.client)
        ids = [f"C{k % customers + 1:05d}" for k in range(count)]
        watchers = WatcherProcess(server.target, ids, connections)
        opened = watchers.receive(600)
        threads, rss_mb = int(server.status("Threads")), int(server.status("VmRSS").split()[0]) / 1024
        print(f"  {count} watchers over {customers} customers ({connections} connections) open in "
              f"{opened['opened']:.1f} s; server threads {threads}, RSS {rss_mb:.0f} MB "
              f"(goal <= 400 MB: {verdict(rss_mb <= 400)})")
        time.sleep(1.0)
        before, wall = server.cpu_seconds(), time.perf_counter()
        time.sleep(idle_seconds)
        used, wall = server.cpu_seconds() - before, time.perf_counter() - wall
        idle = used / wall * 100
        print(f"  idle: {idle:.2f} % of one core over {wall:.1f} s (goal <= 5 %: {verdict(idle <= 5)})")
        beside_ms = median_call_ms(server.client)
        ratio = beside_ms / quiet_ms
        print(f"  GenerateOffers median beside them {beside_ms:.1f} ms, quiet {quiet_ms:.1f} ms: "
              f"x{ratio:.2f} (goal <= x2: {verdict(ratio <= 2)})")
        car, concerned = opened["car"], opened["concerned"]
        written = sell(sqlite, car, redis_url)
        watchers.pipe.send(("deltas", written, 30.0))
        got = watchers.receive(60)
        if got["last"] is None:
            print(f"  one car sold ({car}, offered to {concerned} watchers): none of them got a delta within 30 s")
        else:
            last = got["last"] - written
            print(f"  one car sold ({car}, offered to {concerned} watchers): {got['reached']} of them got their "
                  f"delta, the last {last * 1e3:.0f} ms after the write (goal: all <= 1 s: "
                  f"{verdict(got['reached'] == concerned and last <= 1.0)}); {got['deltas']} deltas in all, "
                  f"the last after {(got['last_any'] - written) * 1e3:.0f} ms")
    finally:
        if watchers:
            watchers.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=10000)
    parser.add_argument("--customers", type=int, default=2500, help="distinct customers among the watchers")
    parser.add_argument("--connections", type=int, default=16, help="client channels the watchers share")
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
            scale(sqlite, args.watchers, args.customers, args.idle_seconds, args.connections,
                  redis.url if redis else None)
        finally:
            if redis:
                redis.kill()


if __name__ == "__main__":
    main()
