"""Database faults against a private MariaDB that the test stops and starts: the circuit opens,
health goes NOT_SERVING, calls fail UNAVAILABLE within their deadline, and the service comes
back by itself. Also pool exhaustion. (The embedded SQLite file cannot be taken away like a
server, so outage tests run on MariaDB only.)"""
from __future__ import annotations

import threading
import time

import grpc
import pytest

import golden_data as golden
from conftest import free_port, make_settings, start_server
from mariadb import MariaDBServer, binaries_available
from server.app import open_repository
from server.errors import Unavailable


@pytest.fixture
def private_mariadb(tmp_path):
    if not binaries_available():
        pytest.fail("mariadbd is needed for the database fault tests")  # .ci/run installs it
    server = MariaDBServer(tmp_path / "mariadb", free_port())
    server.start()
    server.create_database("faults", "faults", "faults-password")
    url = f"mysql://faults:faults-password@127.0.0.1:{server.port}/faults"
    repository = open_repository(make_settings({"TRADEUP_DATABASE_URL": url}))
    repository.migrate()
    repository.put_cars(golden.cars())
    repository.put_customers(golden.domain_customers())
    repository.database.close()
    yield server, url
    server.stop()


def test_outage_and_recovery(private_mariadb, tmp_path):
    mariadb, url = private_mariadb
    running = start_server({"TRADEUP_DATABASE_URL": url, "TRADEUP_RUNTIME_OVERRIDES_FILE": str(tmp_path / "o.json"),
                            "TRADEUP_BREAKER_RESET_SECONDS": "0.5", "TRADEUP_BREAKER_FAILURES": "2",
                            "TRADEUP_DATABASE_CONNECT_TIMEOUT": "0.5", "TRADEUP_DATABASE_READ_TIMEOUT": "1"})
    client = running.client
    seen: list[str] = []

    def watch():
        try:
            for status in client.watch_health(timeout=30):
                seen.append(status)
        except grpc.RpcError:  # cancelled when the test closes the channel
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        assert client.health() == "SERVING"
        watcher.start()
        assert client.generate_offers(customer_id="C0001").summary.total_offers > 0
        mariadb.stop()
        codes = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and client.health() != "NOT_SERVING":
            time.sleep(0.1)
        assert client.health() == "NOT_SERVING"
        for _ in range(10):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                client.generate_offers(customer_id="C0001", timeout=3)
            codes.append(err.value.code())
            assert time.monotonic() - started < 3.5
        assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
        status = client.status()
        assert not status.database_reachable and status.circuit_state in ("open", "half_open")
        mariadb.start()
        back = time.monotonic()
        while time.monotonic() - back < 5 and client.health() != "SERVING":
            time.sleep(0.05)
        assert client.health() == "SERVING", "not serving 5 s after the database came back"
        assert client.generate_offers(customer_id="C0001").summary.total_offers > 0
        time.sleep(0.3)
        assert seen[:3] == ["SERVING", "NOT_SERVING", "SERVING"]
    finally:
        running.stop()


def test_pool_exhaustion(private_mariadb):
    _, url = private_mariadb
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
        with pytest.raises(Unavailable, match="pool exhausted"):
            repository.get_customer("C0001", timeout=0.5)
        waited = time.monotonic() - started
        assert (waited < 0.4) if not blocking else (0.4 < waited < 2.0)
        release.set()
        holder.join()
        assert repository.get_customer("C0001", timeout=0.5).customer_id == "C0001"
        assert repository.breaker.state == "closed"  # a full pool is not an outage
        repository.database.close()
