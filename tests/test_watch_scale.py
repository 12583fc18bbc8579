"""WatchOffers holds no thread per stream: hundreds of watchers on one server process share a few
threads, all get their answer and a sold car's update, and the open-watch count shows in the
status and the metrics; a reader that stops reading does not hold up the others; every
interceptor applies to a watch."""
from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

import golden_data as golden
from client import OfferClient
from conftest import ROOT, database_environ, free_port, load_golden, make_settings, start_server
from protos.tradeup.v1 import offers_pb2 as pb
from server.app import open_repository
from test_watch import Watch, wait_for
from watchers import Watchers, cars_offered

WATCHERS = 300
TOKEN = "test-admin-token"


@pytest.fixture
def environ(tmp_path):
    environ = database_environ("sqlite", None, tmp_path)
    load_golden(environ)
    return environ


def watch_gauges(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return values["tradeup_watch_streams"], values["tradeup_watch_groups"]


def threads_of(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Threads:"))
    return int(line.split()[1])


def test_hundreds_of_watchers_share_a_few_threads_and_all_hear_a_sold_car(environ, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, **environ, "PYTHONFAULTHANDLER": "1", "TRADEUP_PORT": str(port),
           "TRADEUP_HOST": "127.0.0.1", "TRADEUP_METRICS_PORT": str(metrics_port),
           "TRADEUP_METRICS_HOST": "127.0.0.1", "TRADEUP_ADMIN_TOKEN": TOKEN, "TRADEUP_SEED_DEMO_DATA": "false",
           "TRADEUP_CHANGE_POLL_SECONDS": "0.2", "TRADEUP_MAX_STREAMS_PER_CALLER": str(WATCHERS)}
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=log, text=True)
    watchers = None
    repository = open_repository(make_settings(environ))
    try:
        assert f"listening on 127.0.0.1:{port}" in process.stdout.readline()
        client = OfferClient(f"127.0.0.1:{port}", timeout=30, admin_token=TOKEN)
        wait_for(lambda: client.status().database_reachable, 30)
        threads = threads_of(process.pid)
        customers = golden.customers_with_offers(60)
        watchers = Watchers(f"127.0.0.1:{port}", [customers[k % len(customers)] for k in range(WATCHERS)],
                            connections=4, open_timeout=60)
        assert len(watchers.initial) == WATCHERS
        # No thread per stream: the watch service's few threads, whatever the number of streams.
        assert threads_of(process.pid) <= threads + 20, (threads, threads_of(process.pid))
        status = client.status()
        assert (status.watchers, status.watch_groups) == (WATCHERS, len(customers))
        assert watch_gauges(metrics_port) == (WATCHERS, len(customers))

        holders = collections.defaultdict(set)
        for k, message in watchers.initial.items():
            for car in cars_offered(message):
                holders[car].add(k)
        car, concerned = max(holders.items(), key=lambda item: len(item[1]))
        assert len(concerned) >= 10
        repository.set_car_available(car, False)
        wait_for(lambda: concerned <= {k for _, k, _ in watchers.arrivals}, 30)
        assert all(reason == pb.WATCH_REASON_INVENTORY for _, _, reason in watchers.arrivals)

        watchers.close()
        watchers = None
        wait_for(lambda: client.status().watchers == 0, 30)
        assert watch_gauges(metrics_port) == (0, 0)
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if watchers is not None:
            watchers.close()
        repository.database.close()
        if process.poll() is None:
            process.kill()
        log.close()


def test_a_reader_that_stops_reading_does_not_hold_up_the_others(environ):
    # One sender thread: a send the stuck reader held for good would hold up every other watcher.
    server = start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2, TRADEUP_WATCH_SEND_THREADS=1,
                          TRADEUP_WATCH_STALL_SECONDS=1)
    (customer,) = golden.customers_with_offers(1)
    # A small HTTP/2 window and no reads: the server's sends to it block.
    stuck = OfferClient(server.target, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    reader = None
    try:
        stream = stuck.watch_offers(customer_id=customer, timeout=60)
        reader = Watch(server.client, customer_id=customer)
        wait_for(lambda: server.app.watch.status()["watchers"] == 2, 10)
        for fee in (0.03, 0.035, 0.025, 0.045):
            server.client.update_business_parameters({"fees": {"service_fee_pct": fee}})
            version = server.app.settings.current.version
            message = reader.next(timeout=10)  # one stall bound late at most, never held up
            while message.summary.config_version < version:
                message = reader.next(timeout=10)
        assert reader.differs() is None
        # The stuck reader's stream was cancelled after the stall bound.
        wait_for(lambda: server.app.watch.status()["watchers"] == 1, 10)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.CANCELLED
    finally:
        if reader is not None:
            reader.close()
        stuck.close()
        server.stop()


def test_every_interceptor_applies_to_a_watch_as_to_any_call(environ, caplog):
    caplog.set_level(logging.INFO, logger="tradeup.access")
    server = start_server(environ)
    (customer,) = golden.customers_with_offers(1)
    try:
        call = server.client.watch_offers(customer_id=customer, metadata=(("x-request-id", "watch-1"),))
        assert next(call).reason == pb.WATCH_REASON_INITIAL
        assert ("x-request-id", "watch-1") in tuple(call.initial_metadata())
        call.cancel()
        with pytest.raises(grpc.RpcError) as err:  # an error at open time: status, details and trailers
            next(iter(server.client.watch_offers(customer_id="NOPE", metadata=(("x-request-id", "watch-2"),))))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "customer_id" in err.value.details()
        assert {"x-request-id", "grpc-status-details-bin"} <= {key for key, _ in err.value.trailing_metadata()}
        wait_for(lambda: server.app.watch.status()["watchers"] == 0, 10)
        lines = {r.request_id: r for r in caplog.records if r.name == "tradeup.access"}
        assert (lines["watch-1"].code, lines["watch-2"].code) == ("CANCELLED", "NOT_FOUND")
        handled = server.app.metrics.handled
        assert handled.labels("server_stream", "tradeup.v1.OfferService", "WatchOffers", "NOT_FOUND")._value.get() == 1
        assert server.app.metrics.in_flight.labels("/tradeup.v1.OfferService/WatchOffers")._value.get() == 0
    finally:
        server.stop()
