"""The server's life cycle as a process: service calls answer UNAVAILABLE until the database is
prepared, then OK; a first start interrupted at any moment leaves all of the demo data or none
of it (and the next start serves it all); SIGTERM at any moment ends the process with status 0
within the grace period plus one second, without a crash or a traceback.

Real `python -m server` processes (PYTHONFAULTHANDLER=1) on fresh SQLite files or on MariaDB,
each on a free loopback port. The moments are random: the seed is printed, and so is a summary
of the outcomes (`pytest -rP` shows both)."""
from __future__ import annotations

import ctypes
import itertools
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import golden_data as golden
from conftest import BACKENDS, ROOT, free_port, load_golden
from protos.tradeup.v1 import offers_pb2, offers_pb2_grpc
from test_faults import StallingProxy

DEMO = (4000, 5000)  # cars and customers of the demo data
GRACE = 1.0  # seconds: TRADEUP_GRACE_SECONDS of every process here
CRASH_MARKERS = ("Traceback", "Fatal Python error")
OFFER_SERVICE = "tradeup.v1.OfferService"
OK, UNAVAILABLE, CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED


class ServerProcess:
    """`python -m server` on a free port, its output in files."""

    def __init__(self, directory: Path, environ: dict[str, str]):
        directory.mkdir(parents=True)
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.stdout, self.stderr = directory / "stdout", directory / "stderr"
        env = {**os.environ, "PYTHONFAULTHANDLER": "1", "TRADEUP_HOST": "127.0.0.1", "TRADEUP_PORT": str(self.port),
               "TRADEUP_GRACE_SECONDS": str(GRACE), "TRADEUP_HEALTH_CHECK_SECONDS": "0.2",
               "TRADEUP_LOG_LEVEL": "INFO",
               "TRADEUP_ACCESS_LOG_SAMPLE": "1", **environ}
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=out, stderr=err)

    def log(self) -> str:
        return self.stderr.read_text()

    def wait_until(self, condition, what: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.process.poll() is None, f"exited {self.process.returncode} before {what}: {self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {seconds} s"
            time.sleep(0.005)

    def handles_sigterm(self) -> bool:
        """Its SIGTERM handler is in place (SigCgt in /proc: Python itself only catches SIGINT)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:
            return False
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))

    def wait_handlers(self) -> None:
        self.wait_until(self.handles_sigterm, "signal handlers")

    def wait_serving(self) -> None:
        self.wait_until(lambda: "listening on" in self.stdout.read_text(), "banner")

    def stop(self, signum: signal.Signals, thread: int | None = None) -> tuple[int, float]:
        """Send `signum` (to one `thread` of the process, when given); (exit status, seconds until
        the process ended)."""
        sent = time.monotonic()
        if thread is None:
            self.process.send_signal(signum)
        elif ctypes.CDLL(None, use_errno=True).tgkill(self.process.pid, thread, signum) != 0:
            raise OSError(ctypes.get_errno(), "tgkill")
        try:
            code = self.process.wait(timeout=GRACE + 10)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {GRACE + 10} s after {signum.name}: {self.log()[-3000:]}")
        return code, time.monotonic() - sent

    def stop_cleanly(self, what: str, signum: signal.Signals = signal.SIGTERM, thread: int | None = None) -> float:
        """Send `signum`: the process exits 0 within GRACE + 1 s with no crash or traceback in its
        log. Returns the seconds it took."""
        code, seconds = self.stop(signum, thread)
        log = self.log()
        assert code == 0 and seconds <= GRACE + 1, f"{what}: exit {code} after {seconds:.2f} s; {log[-3000:]}"
        assert not any(marker in log for marker in CRASH_MARKERS), f"{what}: {log[-3000:]}"
        return seconds

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def stored(path: Path) -> tuple[int, int]:
    """(cars, customers) in the SQLite file, read directly; (0, 0) before the schema exists."""
    if not path.exists():
        return 0, 0
    connection = sqlite3.connect(path)
    try:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"inventory", "customers"} <= tables:
            return 0, 0
        return (connection.execute("SELECT COUNT(*) FROM inventory").fetchone()[0],
                connection.execute("SELECT COUNT(*) FROM customers").fetchone()[0])
    finally:
        connection.close()


def fail_fast_channel(target: str) -> grpc.Channel:
    """No retries and quick reconnects: each call says what the server answers at that moment."""
    return grpc.insecure_channel(target, options=[("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 20),
                                                  ("grpc.min_reconnect_backoff_ms", 20),
                                                  ("grpc.max_reconnect_backoff_ms", 50)])


def offers_call(stub, customer: str, timeout: float | None) -> tuple[grpc.StatusCode, str]:
    try:
        stub.GenerateOffers(offers_pb2.GenerateOffersRequest(customer_id=customer), timeout=timeout)
        return OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details() or ""


def random_seed() -> int:
    seed = random.randrange(1 << 32)
    print(f"random moments from seed {seed}")
    return seed


@pytest.fixture(scope="module")
def start_window(tmp_path_factory) -> tuple[float, Path]:
    """Seconds from the signal handlers' installation to serving on a fresh SQLite file (the
    moments of a first start to interrupt), and the demo database that start left."""
    directory = tmp_path_factory.mktemp("first-start")
    server = ServerProcess(directory / "server", {"TRADEUP_SQLITE_PATH": str(directory / "tradeup.db")})
    try:
        server.wait_handlers()
        handled = time.monotonic()
        server.wait_serving()
        window = time.monotonic() - handled
        server.stop_cleanly("first start")
    finally:
        server.kill()
    assert stored(directory / "tradeup.db") == DEMO
    print(f"first start: {window:.2f} s from the signal handlers to serving")
    return window, directory / "tradeup.db"


def seeded_copy(template: Path, directory: Path) -> dict[str, str]:
    """The environment of a server on a copy of the demo database, next to `directory`."""
    return {"TRADEUP_SQLITE_PATH": shutil.copy(template, directory.parent / f"{directory.name}.db")}


# --- ready before answering -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_answer_unavailable_until_the_database_is_prepared_then_ok(backend, request, tmp_path):
    """GenerateOffers every 50 ms from the moment the process starts, without and with a deadline:
    UNAVAILABLE (nothing listening, then "starting"), then OK and nothing else; health answers
    throughout, OfferService SERVING only once calls succeed."""
    if backend == "sqlite":
        environ = {"TRADEUP_SQLITE_PATH": str(tmp_path / "tradeup.db")}
    else:  # a MySQL database is seeded on request only
        environ = {"TRADEUP_DATABASE_URL": request.getfixturevalue("mysql_server_url")}
        seeded = subprocess.run([sys.executable, "-m", "server", "seed", "--replace"], cwd=ROOT,
                                env={**os.environ, **environ}, capture_output=True, text=True, timeout=120)
        assert seeded.returncode == 0 and "holds 4000 cars and 5000 customers" in seeded.stdout, seeded.stderr
    ticks: list[tuple[str, list[tuple[grpc.StatusCode, str]]]] = []  # (OfferService health, calls)
    server = ServerProcess(tmp_path / "server", environ)
    try:
        deadline = time.monotonic() + 60
        while sum(all(code == OK for code, _ in calls) for _, calls in ticks) < 5:
            assert time.monotonic() < deadline and server.process.poll() is None, ticks[-3:]
            tick = time.monotonic()
            with fail_fast_channel(server.target) as channel:  # a new one connects at once: no backoff to wait out
                stub, health = offers_pb2_grpc.OfferServiceStub(channel), health_pb2_grpc.HealthStub(channel)
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        health.Check(health_pb2.HealthCheckRequest(service=OFFER_SERVICE), timeout=1).status)
                except grpc.RpcError as err:
                    status = err.code().name
                ticks.append((status, [offers_call(stub, "C00001", timeout) for timeout in (None, 5.0)]))
            time.sleep(max(0.0, tick + 0.05 - time.monotonic()))
        server.stop_cleanly("after the calls")
    finally:
        server.kill()
        if backend == "mysql":
            load_golden(environ)
    codes = [code for _, calls in ticks for code, _ in calls]
    first_ok = codes.index(OK)
    assert set(codes[:first_ok]) == {UNAVAILABLE} and set(codes[first_ok:]) == {OK}, codes
    starting = [status for status, calls in ticks for _, details in calls
                if details.startswith("the server is starting")]
    assert set(starting) <= {"NOT_SERVING"}  # health answers while the server starts, and says so
    assert all(code == OK for status, calls in ticks if status == "SERVING" for code, _ in calls)
    if backend == "sqlite":  # loading the demo data takes several ticks: calls see it
        assert starting, ticks
    print(f"{backend}: {len(codes)} calls from the process's start: {first_ok} UNAVAILABLE ({len(starting)} "
          f"'the server is starting'), then {len(codes) - first_ok} OK")


# --- a first start interrupted --------------------------------------------------------------------

TRIALS_PER_SIGNAL = 10


def interrupted_first_start(directory: Path, signum: signal.Signals, moment: float) -> tuple[str, bool]:
    """Start on a fresh file, send `signum` `moment` seconds after the handlers are in place, then
    restart: the restart serves all the demo data. Returns what the interrupted start left
    ("none" or "all") and whether it was interrupted while loading the demo data."""
    database = directory / "tradeup.db"
    what = f"{signum.name} {moment:.3f} s after the handlers"
    first = ServerProcess(directory / "first", {"TRADEUP_SQLITE_PATH": str(database)})
    try:
        first.wait_handlers()
        time.sleep(moment)
        if signum == signal.SIGKILL:
            assert first.stop(signum)[0] == -signal.SIGKILL
        else:
            first.stop_cleanly(what, signum)
    finally:
        first.kill()
    log = first.log()
    left = stored(database)
    assert left in ((0, 0), DEMO), f"{what} left {left} (cars, customers)"
    restart = ServerProcess(directory / "restart", {"TRADEUP_SQLITE_PATH": str(database)})
    try:
        restart.wait_serving()
        with fail_fast_channel(restart.target) as channel:
            stub = offers_pb2_grpc.OfferServiceStub(channel)
            assert [offers_call(stub, customer, 10.0) for customer in ("C00001", "C05000")] == [(OK, "")] * 2, what
        restart.stop_cleanly(f"restart after {what}")
    finally:
        restart.kill()
    assert stored(database) == DEMO, what
    return ("none" if left == (0, 0) else "all"), ("loading the demo data" in log and "demo data loaded" not in log)


def test_a_first_start_interrupted_at_any_moment_leaves_all_or_none_of_the_demo_data(start_window, tmp_path):
    """TRIALS_PER_SIGNAL each of SIGINT, SIGTERM and SIGKILL at random moments of a first start
    (from the signal handlers to serving, and a little beyond), three starts at a time."""
    window, _ = start_window
    rng = random.Random(random_seed())
    trials = [(signum, k, rng.uniform(0, 1.5 * window))
              for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for k in range(TRIALS_PER_SIGNAL)]
    began = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda t: interrupted_first_start(tmp_path / f"{t[0].name}-{t[1]}", t[0], t[2]),
                                 trials))
    took = time.monotonic() - began
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        mine = [outcome for (s, _, _), outcome in zip(trials, outcomes) if s == signum]
        left = Counter(what for what, _ in mine)
        print(f"{signum.name}: {len(mine)} first starts interrupted ({sum(seeding for _, seeding in mine)} while "
              f"loading the demo data); left no demo data {left['none']}, all of it {left['all']}; "
              f"every restart served {DEMO[0]} cars and {DEMO[1]} customers")
    print(f"{len(trials)} interrupted starts and their restarts in {took:.1f} s")
    assert any(seeding for _, seeding in outcomes), "no start was interrupted while loading the demo data"


# --- SIGTERM at any moment ------------------------------------------------------------------------

def sigterm_while_starting(directory: Path, rng: random.Random, window: float, template: Path) -> tuple[str, float]:
    server = ServerProcess(directory, {"TRADEUP_SQLITE_PATH": str(directory.parent / f"{directory.name}.db")})
    try:
        server.wait_handlers()
        time.sleep(rng.uniform(0, window))
        seconds = server.stop_cleanly("starting")
    finally:
        server.kill()
    log = server.log()
    return ("serving" if "listening on" in server.stdout.read_text() else
            "seeding" if "loading the demo data" in log and "demo data loaded" not in log else "starting"), seconds


def sigterm_when_idle(directory: Path, rng: random.Random, window: float, template: Path) -> tuple[str, float]:
    server = ServerProcess(directory, seeded_copy(template, directory))
    try:
        server.wait_serving()
        time.sleep(rng.uniform(0, 0.3))
        return "idle", server.stop_cleanly("idle")
    finally:
        server.kill()


def sigterm_under_load(directory: Path, rng: random.Random, window: float, template: Path) -> tuple[str, float]:
    """Three clients calling GenerateOffers. Each call the server took is answered as its access
    log says, OK (in flight: it finishes) or UNAVAILABLE (draining); the others end UNAVAILABLE,
    or CANCELLED when they race the server's closing of its connections."""
    server = ServerProcess(directory, seeded_copy(template, directory))
    calls: dict[str, grpc.StatusCode] = {}  # request id: code
    done = threading.Event()

    def load(client: int) -> None:
        with fail_fast_channel(server.target) as channel:
            stub = offers_pb2_grpc.OfferServiceStub(channel)
            for k in itertools.count():
                if done.is_set():
                    return
                request_id = f"load-{client}-{k}"
                try:
                    stub.GenerateOffers(offers_pb2.GenerateOffersRequest(customer_id=f"C{rng.randrange(1, 5001):05d}"),
                                        timeout=5.0, metadata=(("x-request-id", request_id),))
                    calls[request_id] = OK
                except grpc.RpcError as err:
                    calls[request_id] = err.code()
                    done.wait(0.1)  # as the client library's retry policy: back off

    try:
        server.wait_serving()
        clients = [threading.Thread(target=load, args=(k,)) for k in range(3)]
        for client in clients:
            client.start()
        try:
            time.sleep(rng.uniform(0.1, 0.5))
            seconds = server.stop_cleanly("under load")
        finally:
            done.set()
            for client in clients:
                client.join(10)
    finally:
        server.kill()
    logged = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    answered = {line["request_id"]: line["code"] for line in logged
                if line.get("method") == "/tradeup.v1.OfferService/GenerateOffers"}
    assert "OK" in answered.values() and set(answered.values()) <= {"OK", "UNAVAILABLE"}, Counter(answered.values())
    assert all(code.name == answered[request_id] for request_id, code in calls.items() if request_id in answered)
    assert {code for request_id, code in calls.items() if request_id not in answered} <= {UNAVAILABLE, CANCELLED}
    return "under load", seconds


def sigterm_with_a_stream_open(directory: Path, rng: random.Random, window: float,
                               template: Path) -> tuple[str, float]:
    """A GenerateOffersBulk stream answered once and left open by its client: the grace ends it."""
    server = ServerProcess(directory, seeded_copy(template, directory))
    requests: queue.Queue = queue.Queue()
    try:
        server.wait_serving()
        with fail_fast_channel(server.target) as channel:
            stream = offers_pb2_grpc.OfferServiceStub(channel).GenerateOffersBulk(iter(requests.get, None), timeout=30)
            requests.put(offers_pb2.GenerateOffersBulkRequest(customer_id="C00001"))
            assert next(stream).customer_id == "C00001"
            time.sleep(rng.uniform(0, 0.3))
            seconds = server.stop_cleanly("with a stream open")
            with pytest.raises(grpc.RpcError):  # cut at the grace: the client never closed it
                next(stream)
    finally:
        requests.put(None)
        server.kill()
    return "stream open", seconds


def sigterm_with_a_watch_open(directory: Path, rng: random.Random, window: float,
                              template: Path) -> tuple[str, float]:
    """A WatchOffers stream without a deadline: it gets ENDING at once, then UNAVAILABLE."""
    server = ServerProcess(directory, seeded_copy(template, directory))
    try:
        server.wait_serving()
        with fail_fast_channel(server.target) as channel:
            watch = offers_pb2_grpc.OfferServiceStub(channel).WatchOffers(
                offers_pb2.WatchOffersRequest(customer_id="C00001"))
            assert next(watch).summary.customer_id == "C00001"
            time.sleep(rng.uniform(0, 0.3))
            seconds = server.stop_cleanly("with a watch open")
            assert next(watch).reason == offers_pb2.WATCH_REASON_ENDING
            with pytest.raises(grpc.RpcError) as err:
                next(watch)
            assert err.value.code() == UNAVAILABLE
    finally:
        server.kill()
    return "watch open", seconds


def sigterm_to_another_thread(directory: Path, rng: random.Random, window: float,
                              template: Path) -> tuple[str, float]:
    """The kernel hands a process's signal to any of its threads: one that is not the main thread
    (asleep in a wait) still stops the server."""
    server = ServerProcess(directory, seeded_copy(template, directory))
    try:
        server.wait_serving()
        threads = [int(tid) for tid in os.listdir(f"/proc/{server.process.pid}/task")
                   if int(tid) != server.process.pid]
        seconds = server.stop_cleanly("a signal to another thread", signal.SIGTERM, rng.choice(threads))
    finally:
        server.kill()
    return "to another thread", seconds


def sigterm_to_worker_processes(directory: Path, rng: random.Random, window: float,
                                template: Path) -> tuple[str, float]:
    """Two worker processes on a fresh file: the parent seeds before forking, then forwards the signal."""
    database = directory.parent / f"{directory.name}.db"
    server = ServerProcess(directory, {"TRADEUP_SQLITE_PATH": str(database), "TRADEUP_PROCESSES": "2"})
    try:
        server.wait_handlers()
        time.sleep(rng.uniform(0, 2 * window))
        seconds = server.stop_cleanly("worker processes")
    finally:
        server.kill()
    assert stored(database) in ((0, 0), DEMO)
    return ("2 workers serving" if "(2 processes)" in server.stdout.read_text() else "2 workers starting"), seconds


STATES = (sigterm_while_starting, sigterm_when_idle, sigterm_under_load, sigterm_with_a_stream_open,
          sigterm_with_a_watch_open, sigterm_to_another_thread, sigterm_to_worker_processes)
TRIALS_PER_STATE = 5


def test_sigterm_at_any_moment_exits_zero_within_the_grace(start_window, tmp_path):
    window, template = start_window
    rng = random.Random(random_seed())
    trials = [(state, k, rng.random()) for state in STATES for k in range(TRIALS_PER_STATE)]
    rng.shuffle(trials)
    began = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # each trial has a generator of its own: the threads' order is free
        stops = list(pool.map(lambda t: t[0](tmp_path / f"{t[0].__name__}-{t[1]}", random.Random(t[2]), window,
                                             template), trials))
    took = time.monotonic() - began
    by_state: dict[str, list[float]] = {}
    for state, seconds in stops:
        by_state.setdefault(state, []).append(seconds)
    print(f"{len(stops)} SIGTERMs, each exit 0 within {GRACE} s + 1 s with no traceback, in {took:.1f} s: "
          + ", ".join(f"{state} {len(times)} (exit after {min(times):.2f}-{max(times):.2f} s)"
                      for state, times in sorted(by_state.items())))


def test_sigterm_with_the_database_stalled(mysql_server_url, tmp_path):
    """MariaDB behind a proxy that stops passing replies while calls wait on it."""
    environ = {"TRADEUP_DATABASE_URL": mysql_server_url}
    load_golden(environ)
    url = urlparse(mysql_server_url)
    customer = golden.customer_with_offers()
    rng = random.Random(random_seed())
    seconds = []
    for k in range(5):
        proxy = StallingProxy(url.port)
        proxied = url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}").geturl()
        server = ServerProcess(tmp_path / f"stalled-{k}", {"TRADEUP_DATABASE_URL": proxied})
        try:
            server.wait_serving()
            with fail_fast_channel(server.target) as channel:
                stub = offers_pb2_grpc.OfferServiceStub(channel)
                assert offers_call(stub, customer, 10.0) == (OK, "")
                proxy.passing.clear()
                callers = [threading.Thread(target=offers_call, args=(stub, customer, timeout))
                           for timeout in (None, 30.0)]
                for caller in callers:
                    caller.start()
                time.sleep(rng.uniform(0, 0.5))
                seconds.append(server.stop_cleanly("database stalled"))
                for caller in callers:
                    caller.join(10)
        finally:
            proxy.close()
            server.kill()
    print(f"{len(seconds)} SIGTERMs with the database stalled and calls waiting on it: exit 0 after "
          f"{min(seconds):.2f}-{max(seconds):.2f} s (grace {GRACE} s)")
