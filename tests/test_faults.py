"""Database faults against a private MariaDB that the test stops and starts: the circuit opens,
health goes NOT_SERVING, calls fail UNAVAILABLE within their deadline, and the service comes
back by itself. Also pool exhaustion. (The embedded SQLite file cannot be taken away like a
server, so outage tests run on MariaDB only.)"""
from __future__ import annotations

import logging
import ssl
import threading
import time

import grpc
import pytest

import golden_data as golden
from client import error_details
from conftest import free_port, load_golden, make_settings, start_server
from mariadb import MariaDBServer, binaries_available
from protos.tradeup.v1 import offers_pb2, offers_pb2_grpc
from server.app import open_repository
from server.deadline import Deadline
from server.errors import DeadlineExceeded, Unavailable


@pytest.fixture
def private_mariadb(tmp_path):
    if not binaries_available():
        pytest.fail("mariadbd is needed for the database fault tests")  # .ci/run installs it
    server = MariaDBServer(tmp_path / "mariadb", free_port())
    server.start()
    server.create_database("faults", "faults", "faults-password")
    url = f"mysql://faults:faults-password@127.0.0.1:{server.port}/faults"
    load_golden({"TRADEUP_DATABASE_URL": url})
    yield server, url
    server.stop()


def test_outage_and_recovery(private_mariadb, tmp_path):
    mariadb, url = private_mariadb
    running = start_server({"TRADEUP_DATABASE_URL": url,
                            "TRADEUP_BREAKER_RESET_SECONDS": "0.5", "TRADEUP_BREAKER_FAILURES": "2",
                            "TRADEUP_DATABASE_CONNECT_TIMEOUT": "0.5", "TRADEUP_DATABASE_READ_TIMEOUT": "1"})
    client = running.client
    customer = golden.customer_with_offers()
    seen: list[str] = []

    def watch():
        try:
            for status in client.watch_health(OFFER_SERVICE, timeout=30):
                seen.append(status)
        except grpc.RpcError:  # cancelled when the test closes the channel
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        assert client.health() == "SERVING"
        watcher.start()
        assert client.generate_offers(customer_id=customer).summary.total_offers > 0
        cars = client.search_inventory("audi").total_size
        mariadb.stop()
        codes, reasons, retry_after = [], set(), []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.health(OFFER_SERVICE) != "NOT_SERVING":
            time.sleep(0.1)
        assert client.health(OFFER_SERVICE) == "NOT_SERVING"
        assert client.health() == "SERVING"  # liveness: the process is sound, only the database is away
        for _ in range(10):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                client.generate_offers(customer_id=customer, timeout=3)
            codes.append(err.value.code())
            details = error_details(err.value)
            reasons.add(details.reason)
            retry_after.append(details.retry_after)  # known while the circuit is open: until it lets a probe through
            assert time.monotonic() - started < 3.5
        assert set(codes) == {grpc.StatusCode.UNAVAILABLE} and reasons == {"DATABASE_UNAVAILABLE"}
        known = [seconds for seconds in retry_after if seconds is not None]
        assert known and all(0 < seconds <= 0.5 for seconds in known), retry_after  # the circuit's reset time
        # The search: customers are read from the database, cars from the snapshot in memory.
        assert client.health("tradeup.v1.SearchService") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            client.search_customers(id_prefix="C0", timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert client.search_inventory("audi", timeout=3).total_size == cars
        status = client.status()
        assert not status.database_reachable and status.circuit_state in ("open", "half_open")
        mariadb.start()
        back = time.monotonic()
        while time.monotonic() - back < 5 and client.health(OFFER_SERVICE) != "SERVING":
            time.sleep(0.05)
        assert client.health(OFFER_SERVICE) == "SERVING", "not serving 5 s after the database came back"
        assert client.generate_offers(customer_id=customer).summary.total_offers > 0
        time.sleep(0.3)
        assert seen[:3] == ["SERVING", "NOT_SERVING", "SERVING"]
    finally:
        running.stop()


def test_pool_exhaustion(private_mariadb):
    _, url = private_mariadb
    customer = golden.customer_ids()[0]
    for blocking in (False, True):
        repository = open_repository(make_settings({"TRADEUP_DATABASE_URL": url, "TRADEUP_POOL_MAX_CONNECTIONS": "1",
                                                    "TRADEUP_POOL_BLOCKING": str(blocking).lower()}))
        holding, release = threading.Event(), threading.Event()

        def hold():
            with repository.database.cursor():
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        started = time.monotonic()
        # Blocking: the wait ends at the call's deadline; not blocking: at once, the pool full.
        expected = (DeadlineExceeded, "waiting for a database connection") if blocking else \
            (Unavailable, "pool exhausted")
        with pytest.raises(expected[0], match=expected[1]):
            repository.get_customer(customer, Deadline.after(0.5))
        waited = time.monotonic() - started
        assert (waited < 0.4) if not blocking else (0.4 < waited < 2.0)
        release.set()
        holder.join()
        assert repository.get_customer(customer, Deadline.after(0.5)).customer_id == customer
        assert repository.breaker.state == "closed"  # a full pool is not an outage
        repository.database.close()


def pool_and_admin(url: str, connections: int):
    """A repository on MariaDB with a pool of `connections`, and an autocommit connection of the
    same user beside it, to look at and act on the server."""
    import pymysql
    repository = open_repository(make_settings({"TRADEUP_DATABASE_URL": url,
                                                "TRADEUP_POOL_MAX_CONNECTIONS": str(connections)}))
    params = make_settings({"TRADEUP_DATABASE_URL": url}).database.mysql_params()
    admin = pymysql.connect(host=params["host"], port=params["port"], user=params["user"],
                            password=params["password"], database=params["database"], autocommit=True)
    return repository, admin, params["user"]


def test_the_pool_is_opened_ahead_and_calls_open_no_connection(private_mariadb):
    """warm_up fills the pool; then more concurrent calls than connections share those connections
    (the server counts no new one) and each call sends its statement only (no ping, no rollback)."""
    repository, admin, user = pool_and_admin(private_mariadb[1], 4)
    database = repository.database

    def server_status(name: str) -> int:
        with admin.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
            return int(cursor.fetchone()[1])

    customers = golden.customer_ids()[:40]
    try:
        database.warm_up()
        assert database.pool_status() == (0, 4)
        connections, pings, questions = (server_status(name) for name in ("Connections", "Com_admin_commands", "Questions"))
        callers = [threading.Thread(target=lambda ids: [repository.get_customer(c, Deadline.after(5)) for c in ids],
                                    args=(customers[k::8],)) for k in range(8)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(10)
        # Questions counts every statement, the one reading it included: one per call, no rollback.
        assert server_status("Questions") - questions == len(customers) + 1
        assert database.pool_status() == (0, 4)
        assert server_status("Connections") == connections
        assert server_status("Com_admin_commands") == pings  # COM_PING counts here

        def connection_id() -> int:
            with database.cursor(Deadline.after(5)) as cursor:
                cursor.execute("SELECT CONNECTION_ID()")
                return cursor.fetchone()[0]
        # One caller at a time gets the connection it used last (warm on the server), not the longest idle.
        assert len({connection_id() for _ in range(6)}) == 1
    finally:
        admin.close()
        database.close()


def test_connections_share_one_tls_context_and_still_only_offer_tls(private_mariadb):
    """pymysql offers TLS on every connect and builds a new context for it, loading the system's
    CA bundle (most of a connect's time): the pool's connections share one context, and offer TLS
    as pymysql does without TLS settings, so they connect to this server, which offers none."""
    repository, admin, _ = pool_and_admin(private_mariadb[1], 2)
    database = repository.database
    first, second = database._open(), database._open()
    try:
        assert first.ctx is second.ctx and first.ctx.verify_mode == ssl.CERT_NONE
        assert first.ssl and not first._ssl_required  # offered, not required
        assert first.open and second.open and first.thread_id() != second.thread_id()
        with second.cursor() as cursor:
            cursor.execute("SELECT @@session.time_zone")
            assert cursor.fetchone() == ("+00:00",)
    finally:
        for connection in (first, second, admin):
            connection.close()
        database.close()


def test_a_connection_that_died_in_the_pool_is_replaced(private_mariadb):
    """No ping on checkout: a read on a connection the server closed meanwhile is retried once on a
    new connection, set up like the first (UTC); a write is not retried (it may have been applied)
    and fails UNAVAILABLE, and the next call works on a connection opened again."""
    repository, admin, user = pool_and_admin(private_mariadb[1], 1)
    database = repository.database

    def kill_pooled() -> int:
        """Kill the pool's connection (every session of the user but this one); its thread id."""
        with admin.cursor() as cursor:
            cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s AND id <> CONNECTION_ID()",
                           (user,))
            (thread_id,), = cursor.fetchall()
            cursor.execute("KILL %s", (thread_id,))
        return thread_id

    def session() -> tuple[int, str]:
        with database.cursor(Deadline.after(5)) as cursor:
            cursor.execute("SELECT CONNECTION_ID(), @@session.time_zone")
            return cursor.fetchone()

    try:
        database.warm_up()
        assert database.pool_status() == (0, 1) and session()[1] == "+00:00"
        killed = kill_pooled()
        first, last = golden.customer_ids()[0], golden.customer_ids()[-1]
        assert repository.get_customer(first, Deadline.after(5)).customer_id == first
        assert database.pool_status() == (0, 1) and repository.breaker.state == "closed"
        replaced, zone = session()
        assert replaced != killed and zone == "+00:00"
        kill_pooled()
        with pytest.raises(Unavailable):
            repository.set_car_available("no-such-car", True)
        assert repository.get_customer(last, Deadline.after(5)).customer_id == last
        assert session()[1] == "+00:00"
    finally:
        admin.close()
        database.close()


class StallingProxy:
    """A loopback TCP proxy to the database that can stop passing replies (a hung server)."""

    def __init__(self, upstream_port: int):
        import socket
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.passing = threading.Event()
        self.passing.set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source, target, replies):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if replies:
                    self.passing.wait()  # a stalled database: replies are held back
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.passing.set()
        self.listener.close()

OFFER_SERVICE = "tradeup.v1.OfferService"


def wait_for(condition, seconds: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def test_stalled_database_frees_every_worker_and_health_still_answers(private_mariadb, tmp_path):
    """More stalled calls than workers: each ends DEADLINE_EXCEEDED on time and the server stops
    working on it; health answers from its own threads meanwhile and readiness turns NOT_SERVING."""
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    url = f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults"
    running = start_server({"TRADEUP_DATABASE_URL": url,
                            "TRADEUP_DATABASE_READ_TIMEOUT": "30", "TRADEUP_DATABASE_CONNECT_TIMEOUT": "30",
                            "TRADEUP_HEALTH_CHECK_SECONDS": "0.5", "TRADEUP_MAX_WORKERS": "2",
                            "TRADEUP_POOL_MAX_CONNECTIONS": "4"})
    app = running.app
    outcomes: list[tuple[grpc.StatusCode, float]] = []
    customer = golden.customer_with_offers()
    offers = len(golden.offers_of(customer)["offers"])
    try:
        assert running.client.generate_offers(customer_id=customer).summary.total_offers == offers  # warm
        assert running.client.health(OFFER_SERVICE) == "SERVING"
        proxy.passing.clear()
        stalled_at = time.monotonic()

        def call(k: int):
            started = time.monotonic()
            try:
                running.client.generate_offers(customer_id=customer, timeout=1.0)
                outcomes.append((grpc.StatusCode.OK, time.monotonic() - started))
            except grpc.RpcError as err:
                outcomes.append((err.code(), time.monotonic() - started))

        callers = [threading.Thread(target=call, args=(k,)) for k in range(8)]  # 4x the workers
        for caller in callers:
            caller.start()
        assert wait_for(lambda: app.calls.admission.in_progress > 2, 5), "no call is waiting for a worker"
        # Every worker is stuck on the database now; probes do not wait for one (a 1 s deadline
        # would run out behind the stalled calls if they did).
        for service in ("", OFFER_SERVICE, "tradeup.v1.AdminService"):
            running.client.health(service, timeout=1.0)
        assert wait_for(lambda: running.client.health(OFFER_SERVICE, timeout=1.0) == "NOT_SERVING", 5)
        not_ready_after = time.monotonic() - stalled_at
        assert running.client.health(timeout=1.0) == "SERVING"  # the process itself is alive
        for caller in callers:
            caller.join(10)
        assert [code for code, _ in outcomes] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 8
        # The server stops working on them at their deadline, not when the database answers.
        assert wait_for(lambda: app.calls.admission.in_progress == 0 and app.repository.database.pool_status()[0] == 0,
                        3), "a worker is still busy with a call whose deadline passed"
        assert time.monotonic() - stalled_at < 6
        assert not_ready_after < 2.5, not_ready_after
        proxy.passing.set()
        assert wait_for(lambda: running.client.health(OFFER_SERVICE) == "SERVING", 10)
        assert running.client.generate_offers(customer_id=customer, timeout=5).summary.total_offers == offers
    finally:
        proxy.close()
        running.stop()


def test_start_against_a_stalled_database(private_mariadb, tmp_path):
    """The server listens at once, ready only once the database answers."""
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    proxy.passing.clear()
    url = f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults"
    started = time.monotonic()
    running = start_server({"TRADEUP_DATABASE_URL": url,
                            "TRADEUP_DATABASE_READ_TIMEOUT": "30", "TRADEUP_DATABASE_CONNECT_TIMEOUT": "30",
                            "TRADEUP_HEALTH_CHECK_SECONDS": "0.5", "TRADEUP_BREAKER_RESET_SECONDS": "0.5"})
    customer = golden.customer_with_offers()
    try:
        assert running.client.health(timeout=1.0) == "SERVING"
        assert time.monotonic() - started < 3
        assert running.client.health(OFFER_SERVICE, timeout=1.0) == "NOT_SERVING"
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            running.client.generate_offers(customer_id=customer, timeout=1.0)
        assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        assert time.monotonic() - began < 1.5
        assert wait_for(lambda: running.app.calls.admission.in_progress == 0, 3)
        proxy.passing.set()
        assert wait_for(lambda: running.client.health(OFFER_SERVICE) == "SERVING", 10)
        assert running.client.generate_offers(customer_id=customer, timeout=5).summary.total_offers == \
            len(golden.offers_of(customer)["offers"])
    finally:
        proxy.close()
        running.stop()


def test_worker_processes_start_against_a_stalled_database(private_mariadb, tmp_path):
    """`python -m server` with 2 processes: the parent's preparation gives up fast, the workers
    listen, and readiness follows the database once it answers."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path
    from client import OfferClient
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    proxy.passing.clear()
    port = free_port()
    env = {**os.environ, "TRADEUP_DATABASE_URL": f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults",
           "TRADEUP_PORT": str(port), "TRADEUP_HOST": "127.0.0.1", "TRADEUP_PROCESSES": "2",
           "TRADEUP_DATABASE_READ_TIMEOUT": "30", "TRADEUP_DATABASE_CONNECT_TIMEOUT": "30",
           "TRADEUP_HEALTH_CHECK_SECONDS": "0.5", "TRADEUP_BREAKER_RESET_SECONDS": "0.5",
           "TRADEUP_LOG_LEVEL": "ERROR"}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=Path(__file__).resolve().parents[1], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "(2 processes)" in process.stdout.readline()
        listening_after = time.monotonic() - started
        with OfferClient(f"127.0.0.1:{port}", timeout=5) as client:
            assert client.health() == "SERVING"
            assert client.health(OFFER_SERVICE) == "NOT_SERVING"
            proxy.passing.set()
            assert wait_for(lambda: client.health(OFFER_SERVICE) == "SERVING", 15)
            customer = golden.customer_with_offers()
            assert client.generate_offers(customer_id=customer, max_offers=1).summary.total_offers == \
                len(golden.offers_of(customer)["offers"])
        assert listening_after < 15, listening_after  # interpreter start and imports included; no database wait
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        proxy.close()
        if process.poll() is None:
            process.kill()


def test_calls_after_shutdown_begins_end_unavailable(private_mariadb, tmp_path):
    """While the calls in progress drain, new calls end UNAVAILABLE (clients retry elsewhere),
    on existing connections and new ones; the call in progress still completes."""
    from protos.tradeup.v1 import offers_pb2, offers_pb2_grpc
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    url = f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults"
    running = start_server({"TRADEUP_DATABASE_URL": url,
                            "TRADEUP_DATABASE_READ_TIMEOUT": "30", "TRADEUP_HEALTH_CHECK_SECONDS": "5"})
    app = running.app
    results: list = []
    customer = golden.customer_with_offers()
    try:
        running.client.generate_offers(customer_id=customer)
        proxy.passing.clear()  # holds the next call in progress
        in_flight = threading.Thread(target=lambda: results.append(
            running.client.generate_offers(customer_id=customer, timeout=30).summary.total_offers))
        in_flight.start()
        assert wait_for(lambda: app.calls.admission.in_progress == 1, 5)
        stopper = threading.Thread(target=app.stop, kwargs={"grace": 30})
        stopper.start()
        assert wait_for(lambda: running.client.health(timeout=2) == "NOT_SERVING", 5)
        with grpc.insecure_channel(running.target) as channel:  # a new connection, no retries
            stub = offers_pb2_grpc.OfferServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.GenerateOffers(offers_pb2.GenerateOffersRequest(customer_id=customer), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # the client's own connection, with its retries
            running.client.generate_offers(customer_id=customer, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stopper.is_alive()  # still draining
        proxy.passing.set()
        in_flight.join(10)
        stopper.join(10)
        assert results == [len(golden.offers_of(customer)["offers"])] and app.stopped.is_set()
    finally:
        proxy.close()
        running.stop()


def test_outage_under_load(private_mariadb, tmp_path):
    """Bounded load from 4 client threads while MariaDB goes down and comes back."""
    mariadb, url = private_mariadb
    running = start_server({"TRADEUP_DATABASE_URL": url,
                            "TRADEUP_BREAKER_RESET_SECONDS": "0.5", "TRADEUP_DATABASE_CONNECT_TIMEOUT": "0.5",
                            "TRADEUP_DATABASE_READ_TIMEOUT": "2", "TRADEUP_HEALTH_CHECK_SECONDS": "0.2"})
    client = running.client
    customers = golden.customer_ids()
    client.generate_offers(customer_id=customers[0])
    threads_before = threading.active_count()
    outcomes: list[tuple[float, str, float]] = []  # (start, code, seconds)
    health: list[tuple[float, str]] = []
    stop = threading.Event()

    def load():
        from client import OfferClient
        with OfferClient(running.target, timeout=2) as own:
            k = 0
            while not stop.is_set():
                k += 1
                started = time.monotonic()
                try:
                    own.generate_offers(customer_id=customers[k % len(customers)], max_offers=5, timeout=2)
                    code = "OK"
                except grpc.RpcError as err:
                    code = err.code().name
                outcomes.append((started, code, time.monotonic() - started))

    def watch():
        while not stop.is_set():
            try:
                health.append((time.monotonic(), client.health(OFFER_SERVICE, timeout=1)))
            except grpc.RpcError:
                pass
            time.sleep(0.1)

    workers = [threading.Thread(target=load) for _ in range(4)] + [threading.Thread(target=watch)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        mariadb.stop()
        down_at = time.monotonic()
        time.sleep(2.0)
        mariadb.start()
        back_at = time.monotonic()
        time.sleep(6.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        # A health check may hold a connection for a moment; one the outage leaked stays in use.
        pool_released = wait_for(lambda: client.status().pool_in_use == 0, 5)
        running_status = client.status()
        running.stop()
    codes = {code for _, code, _ in outcomes}
    assert codes <= {"OK", "UNAVAILABLE"}, codes
    assert "UNAVAILABLE" in codes and all(seconds < 2.5 for _, _, seconds in outcomes)
    assert any(s == "NOT_SERVING" for t, s in health if down_at < t < back_at)
    recovered = min(t for t, code, _ in outcomes if code == "OK" and t > back_at)
    assert recovered - back_at < 5.0, "no successful call within 5 s of the database returning"
    assert all(code == "OK" for t, code, _ in outcomes if t > back_at + 5.0)
    assert health[-1][1] == "SERVING"
    assert pool_released and running_status.circuit_state == "closed"
    assert threading.active_count() <= threads_before + 2  # no threads left behind by the outage


def test_database_errors_reach_the_log_not_the_client(private_mariadb, caplog):
    caplog.set_level(logging.WARNING)
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    running = start_server({"TRADEUP_DATABASE_URL": f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults"},
                           TRADEUP_BREAKER_FAILURES=1000, TRADEUP_HEALTH_CHECK_SECONDS=60,
                           TRADEUP_DATABASE_READ_TIMEOUT=0.5)
    try:
        customer = golden.customer_ids()[0]
        assert running.client.generate_offers(customer_id=customer).summary.customer_id == customer
        proxy.passing.clear()
        with pytest.raises(grpc.RpcError) as err:
            running.client.generate_offers(customer_id=customer, metadata=(("x-request-id", "outage-1"),))
    finally:
        running.stop()
        proxy.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "database unavailable"
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == "outage-1" and r.name == "tradeup.data"]
    assert logged and "OperationalError" in logged[-1].getMessage() and "timed out" in logged[-1].getMessage()


def test_calls_without_a_deadline_against_a_stalled_database(private_mariadb):
    """No deadline from the caller: a call waits for a busy worker and is answered once the
    database answers again; against a database that stays stalled every RPC ends
    DEADLINE_EXCEEDED at the server's default deadline, not in a hang."""
    mariadb, _ = private_mariadb
    proxy = StallingProxy(mariadb.port)
    running = start_server({"TRADEUP_DATABASE_URL": f"mysql://faults:faults-password@127.0.0.1:{proxy.port}/faults"},
                           TRADEUP_DATABASE_READ_TIMEOUT=30, TRADEUP_DATABASE_CONNECT_TIMEOUT=30,
                           TRADEUP_HEALTH_CHECK_SECONDS=60, TRADEUP_MAX_WORKERS=1, TRADEUP_DEFAULT_DEADLINE_SECONDS=2)
    channel = grpc.insecure_channel(running.target)
    stub = offers_pb2_grpc.OfferServiceStub(channel)
    customer = golden.customer_with_offers()
    offers = len(golden.offers_of(customer)["offers"])
    offer = golden.offers_of(customer)["offers"][0]
    request = offers_pb2.GenerateOffersRequest(customer_id=customer)
    try:
        assert stub.GenerateOffers(request).summary.total_offers == offers
        # The only worker waits on a stalled read; a second call waits for the worker.
        proxy.passing.clear()
        results: list = []
        callers = [threading.Thread(target=lambda: results.append(stub.GenerateOffers(request))) for _ in range(2)]
        for caller in callers:
            caller.start()
        assert wait_for(lambda: running.app.calls.admission.in_progress == 2, 5)
        time.sleep(0.5)
        proxy.passing.set()
        for caller in callers:
            caller.join(10)
        assert [r.summary.total_offers for r in results] == [offers, offers]
        # Stalled for good: each RPC ends at the default deadline (2 s), none hangs.
        proxy.passing.clear()
        calls = {
            "GenerateOffers": lambda: stub.GenerateOffers(request),
            "StreamOffers": lambda: list(stub.StreamOffers(offers_pb2.StreamOffersRequest(customer_id=customer))),
            "GenerateOffersBulk": lambda: list(stub.GenerateOffersBulk(
                iter([offers_pb2.GenerateOffersBulkRequest(customer_id=customer)]))),
            "FindMinimumSubsidy": lambda: list(stub.FindMinimumSubsidy(
                offers_pb2.FindMinimumSubsidyRequest(customer_id=customer))),
            "GetAmortizationTable": lambda: stub.GetAmortizationTable(offers_pb2.GetAmortizationTableRequest(
                customer_id=customer, car_id=offer["car_id"], term=offer["term"])),
            "WatchOffers": lambda: next(stub.WatchOffers(offers_pb2.WatchOffersRequest(customer_id=customer))),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                call()
            took = time.monotonic() - started
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, err.value.details())
            assert 1.9 < took < 3.0, (name, took)
    finally:
        proxy.passing.set()
        channel.close()
        running.stop()
        proxy.close()
