"""WatchOffers on real servers over a real database: each watcher receives exactly the changes
that concern it (applied to its previous answer, they give a fresh GenerateOffers, offer by
offer), nothing for changes that cannot concern it, RESYNC when it falls behind, ENDING then
UNAVAILABLE on SIGTERM; on two servers of one database, by polling and by Redis push."""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

import golden_data as golden
from client import LiveOffers, OfferClient
from conftest import BACKENDS, database_environ, free_port, load_golden, make_settings, start_server
from protos.tradeup.v1 import offers_pb2 as pb
from server.deadline import Deadline
from server.app import open_repository
from server.services.offers import CustomerRef, OfferQuery
from server.services.watch import CONFIGURATION, INITIAL, RESYNC, Stream

ROOT = Path(__file__).resolve().parents[1]
COUNTS = ("customer_id", "cars_evaluated", "total_offers", "refresh_count", "upgrade_count", "max_upgrade_count")
QUIET_SECONDS = 1.5  # how long a message that must not come is waited for
# Watched customers, chosen from the vector set by what the tests need of them (any set of the format).
A, C, D = golden.customers_with_offers(3)
B = golden.customer_where("offers at 36 or 48 months", lambda r: any(o["term"] in (36, 48) for o in r["offers"]))


def wait_for(condition, timeout: float = 60.0, interval: float = 0.05):
    """Poll until condition() is truthy (generous: the machine is shared and loaded)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(interval)
    return value


def offers_of(response: pb.GenerateOffersResponse) -> list[pb.Offer]:
    return [offer for group in response.groups for offer in group.offers]


def counts_of(summary: pb.OfferSummary) -> tuple:
    return tuple(getattr(summary, name) for name in COUNTS) + (summary.rejected.SerializeToString(),)


class Watch:
    """One WatchOffers stream, read on a thread into a queue, applied to a LiveOffers."""

    def __init__(self, client: OfferClient, **request):
        self.client = client
        self.request = request
        self.call = client.watch_offers(**request)  # no deadline, as a screen would watch
        self.live = LiveOffers()
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.next().reason == pb.WATCH_REASON_INITIAL
        assert self.differs() is None

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as err:
            self.messages.put(err)

    def next(self, timeout: float = 60.0) -> pb.WatchOffersResponse:
        item = self.messages.get(timeout=timeout)
        if isinstance(item, Exception):
            raise item
        self.live.apply(item)
        return item

    def quiet(self) -> None:
        with pytest.raises(queue.Empty):
            item = self.messages.get(timeout=QUIET_SECONDS)
            raise AssertionError(f"unexpected message {item}")

    def differs(self) -> pb.GenerateOffersResponse | None:
        """A fresh GenerateOffers if it differs from what this watcher holds now, else None."""
        fresh = self.client.generate_offers(**self.request)
        same = offers_of(fresh) == self.live.offers() and counts_of(fresh.summary) == counts_of(self.live.summary)
        return None if same else fresh

    def follow(self, reason: int) -> pb.WatchOffersResponse | None:
        """Whatever the change did to this customer's answer, exactly that arrives; or nothing."""
        fresh = self.differs()
        if fresh is None:
            self.quiet()
            return None
        message = self.next()
        assert message.reason == reason
        assert not message.HasField("answer")
        assert offers_of(fresh) == self.live.offers(), "delta applied to the previous answer != GenerateOffers"
        assert counts_of(fresh.summary) == counts_of(message.summary)
        assert (message.summary.config_version, message.summary.inventory_version) == \
            (fresh.summary.config_version, fresh.summary.inventory_version)
        return message

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture(params=BACKENDS)
def watch_database(request, tmp_path):
    """A database of its own for sqlite; for mysql the shared test database, restored after."""
    environ = database_environ(request.param, request, tmp_path)
    load_golden(environ)
    yield environ
    load_golden(environ)


@pytest.fixture
def environ(tmp_path):
    """An embedded database of its own holding the vector set."""
    environ = database_environ("sqlite", None, tmp_path)
    load_golden(environ)
    return environ


def applied(servers, repository) -> None:
    """Wait until every server applied what the database holds now."""
    state = repository.change_state()
    version, _ = repository.config_overrides()
    wait_for(lambda: all(s.app.inventory.current() is not None
                         and s.app.inventory.current().version >= state.inventory_version
                         and s.app.settings.current.version >= version for s in servers))


def test_each_watcher_receives_exactly_its_changes_on_two_servers(watch_database):
    servers = [start_server(watch_database, TRADEUP_CHANGE_POLL_SECONDS=0.2, TRADEUP_WATCH_CUSTOMER_POLL_SECONDS=0.2)
               for _ in range(2)]
    first, second = servers
    repository = open_repository(make_settings(watch_database))
    watches = []
    try:
        profile = {**{k: v for k, v in golden.customers()[C].items()
                      if k in pb.CustomerProfile.DESCRIPTOR.fields_by_name}, "customer_id": "inline"}
        a1 = Watch(first.client, customer_id=A)
        a2 = Watch(second.client, customer_id=A)  # the same customer on the other process
        a3 = Watch(second.client, customer_id=A)  # shares the pricing of a2
        b = Watch(second.client, customer_id=B, max_offers=10, terms=[36, 48])
        c = Watch(first.client, profile=profile, tiers=["upgrade"])
        d = Watch(first.client, customer_id=D, max_cars=5)  # cars after its fifth concern it not
        watches = [a1, a2, a3, b, c, d]
        cars = {car.car_id: car for car in golden.cars()}

        def step(reason: int, must_reach=()) -> None:
            applied(servers, repository)
            reached = {id(w) for w in watches if w.follow(reason) is not None}
            assert {id(w) for w in must_reach} <= reached

        # A car no one can be offered (cheaper than every customer's car): nothing at all.
        repository.put_cars([dataclasses.replace(next(iter(cars.values())), car_id="ZZ-CHEAP", regular_price=1000.0,
                                                 year=1990)])
        applied(servers, repository)
        for watch in watches:
            watch.quiet()
        # Sold: the best car of A. The next message of its watchers is this change's, not the last.
        repository.set_car_available(a1.live.offers()[0].car_id, False)
        step(pb.WATCH_REASON_INVENTORY, must_reach=(a1, a2, a3))
        # Added: a twin of B's best car under a new id (it ranks right after it).
        best = cars[b.live.offers()[0].car_id]
        repository.put_cars([dataclasses.replace(best, car_id="ZZ-NEW")])
        step(pb.WATCH_REASON_INVENTORY, must_reach=(b,))
        # Repriced: B's best car 5 % cheaper (other answers may move too: whatever they get is checked).
        repository.put_cars([dataclasses.replace(best, regular_price=best.price * 0.95, promotion_price=None)])
        step(pb.WATCH_REASON_INVENTORY, must_reach=(b,))
        # A business parameter, through the other server's admin service.
        second.client.update_business_parameters({"fees": {"service_fee_pct": 0.03}})
        step(pb.WATCH_REASON_CONFIGURATION, must_reach=(a1, a2, a3, b))
        # The stored customer's own record.
        customer = next(x for x in golden.domain_customers() if x.customer_id == A)
        repository.put_customers([dataclasses.replace(customer,
                                                      current_monthly_payment=customer.current_monthly_payment * 1.1)])
        wait_for(lambda: a1.messages.qsize() and a2.messages.qsize() and a3.messages.qsize())
        step(pb.WATCH_REASON_CUSTOMER, must_reach=(a1, a2, a3))
        assert all(s.app.watch.status()["watchers"] == n for s, n in ((first, 3), (second, 3)))
        assert second.app.watch.status()["watch_groups"] == 2  # a2 and a3 share one pricing
    finally:
        for watch in watches:
            watch.close()
        repository.database.close()
        for server in servers:
            server.stop()


def test_redis_push_reaches_the_watchers_of_the_other_server(redis_server, environ):
    # Polling once a minute: the update can only come this fast through Redis.
    servers = [start_server(environ, TRADEUP_REDIS_URL=redis_server.url, TRADEUP_CHANGE_POLL_SECONDS=60)
               for _ in range(2)]
    first, second = servers
    watch = Watch(second.client, customer_id=A, max_offers=20)
    try:
        first.client.update_business_parameters({"fees": {"service_fee_pct": 0.025}})
        message = watch.next(timeout=30)
        assert message.reason == pb.WATCH_REASON_CONFIGURATION and message.changed
        assert watch.differs() is None
        reload = second.app.inventory.current().reload_version
        first.client.invalidate_cache()  # every process reloads in full: the same answer, nothing sent
        wait_for(lambda: second.app.inventory.current() is not None
                 and second.app.inventory.current().reload_version != reload)
        watch.quiet()
    finally:
        watch.close()
        for server in servers:
            server.stop()


def test_a_reader_that_falls_behind_gets_one_fresh_answer(environ):
    server = start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2, TRADEUP_WATCH_QUEUE_MESSAGES=2)
    watch = server.app.watch
    sent: queue.Queue = queue.Queue()
    reads = threading.Event()  # the reader reads nothing after the INITIAL until set

    def send(update):
        sent.put(update)
        if update.reason != INITIAL:
            assert reads.wait(30)

    stream = Stream(send=send, end=sent.put, cancel=lambda: None)
    watcher = watch.open(OfferQuery(customer=CustomerRef(customer_id=A)), Deadline.after(10), None, stream)
    try:
        assert sent.get(timeout=10).reason == INITIAL
        group = watcher.group
        for k, fee in enumerate((0.03, 0.035, 0.025, 0.045)):  # four updates for a mailbox of two
            server.client.update_business_parameters({"fees": {"service_fee_pct": fee}})
            wait_for(lambda: group.answer.result.config_version == server.app.settings.current.version)
        assert sent.get(timeout=10).reason == CONFIGURATION  # the one being sent when the reader stopped
        reads.set()
        update = sent.get(timeout=10)
        assert update.reason == RESYNC and update.full and update.answer is group.answer
        fresh = server.client.generate_offers(customer_id=A)
        assert [(o.car_id, o.term, o.monthly_payment) for o in offers_of(fresh)] == \
            [(o.car_id, o.term, o.monthly_payment) for o in update.answer.offers().values()]
        with pytest.raises(queue.Empty):  # nothing more queued
            sent.get(timeout=QUIET_SECONDS)
    finally:
        watcher.cancel()
        assert sent.get(timeout=10) is None  # the call ended as its client left
        wait_for(lambda: watch.status() == {"watchers": 0, "watch_groups": 0})
        server.stop()


def test_a_client_that_does_not_read_gets_resync_over_grpc(environ):
    server = start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2, TRADEUP_WATCH_QUEUE_MESSAGES=2,
                          TRADEUP_WATCH_STALL_SECONDS=120)
    # A small HTTP/2 window: the server's send blocks until this client reads.
    slow = OfferClient(server.target, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)])
    try:
        stream = slow.watch_offers(customer_id=A, timeout=300)
        wait_for(lambda: server.app.watch.status()["watch_groups"] == 1)
        (group,) = server.app.watch._groups.values()
        for fee in (0.03, 0.035, 0.025, 0.045, 0.02):  # five updates for a mailbox of two
            server.client.update_business_parameters({"fees": {"service_fee_pct": fee}})
            wait_for(lambda: group.answer.result.config_version == server.app.settings.current.version)
        live = LiveOffers()
        reasons = []
        for message in stream:
            live.apply(message)
            reasons.append(message.reason)
            if message.summary.config_version == server.app.settings.current.version:
                break
        assert reasons[0] == pb.WATCH_REASON_INITIAL and reasons[-1] == pb.WATCH_REASON_RESYNC
        assert len(reasons) <= 4  # at most the two queued before it overflowed, never all five
        assert offers_of(server.client.generate_offers(customer_id=A)) == live.offers()
        stream.cancel()
    finally:
        slow.close()
        server.stop()


def test_limits_deadline_cancellation_and_bad_requests(environ):
    # One worker thread for ordinary calls: the watch streams must not take it.
    server = start_server(environ, TRADEUP_MAX_WATCHERS=2, TRADEUP_MAX_WORKERS=1)
    client = server.client
    try:
        held = [Watch(client, customer_id=customer) for customer in (A, B)]
        assert server.app.watch.status()["watchers"] == 2
        with pytest.raises(grpc.RpcError) as err:
            next(iter(client.watch_offers(customer_id=C, timeout=30)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert offers_of(client.generate_offers(customer_id=C))  # served beside two streams
        held[0].close()
        wait_for(lambda: server.app.watch.status()["watchers"] == 1)
        with pytest.raises(grpc.RpcError) as err:
            list(client.watch_offers(customer_id=C, timeout=1.0))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: server.app.watch.status() == {"watchers": 1, "watch_groups": 1})
        for request, code, field in (({"customer_id": "NOPE"}, grpc.StatusCode.NOT_FOUND, "customer_id"),
                                     ({"customer_id": A, "max_cars": 100000}, grpc.StatusCode.INVALID_ARGUMENT,
                                      "options.max_cars")):
            with pytest.raises(grpc.RpcError) as err:
                next(iter(client.watch_offers(timeout=30, **request)))
            assert err.value.code() == code and field in err.value.details()
        assert server.app.watch.status()["watchers"] == 1
        held[1].close()
    finally:
        server.stop()


def test_the_rate_limit_applies_at_the_start_of_a_watch(environ):
    server = start_server(environ, TRADEUP_RATE_LIMIT_PER_SECOND=0.001, TRADEUP_RATE_LIMIT_BURST=1)
    try:
        watch = server.client.watch_offers(customer_id=A, timeout=60)
        assert next(watch).reason == pb.WATCH_REASON_INITIAL
        with pytest.raises(grpc.RpcError) as err:
            next(iter(server.client.watch_offers(customer_id=A, timeout=30)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watch.cancel()
    finally:
        server.stop()


def test_sigterm_sends_ending_then_unavailable(tmp_path):
    port = free_port()
    env = {**os.environ, "TRADEUP_PORT": str(port), "TRADEUP_HOST": "127.0.0.1",
           "TRADEUP_SQLITE_PATH": str(tmp_path / "demo.db"), "TRADEUP_GRACE_SECONDS": "30"}
    process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert f"listening on 127.0.0.1:{port}" in process.stdout.readline()
        with OfferClient(f"127.0.0.1:{port}", timeout=30) as client:
            watch = Watch(client, customer_id="C00042")
            process.send_signal(signal.SIGTERM)
            assert watch.next().reason == pb.WATCH_REASON_ENDING
            with pytest.raises(grpc.RpcError) as err:
                watch.next()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # The stream ends at once, not at the end of the 30 s grace.
        assert process.wait(timeout=25) == 0
    finally:
        if process.poll() is None:
            process.kill()


def interruptible(command: list[str], **options) -> subprocess.Popen:
    """Popen with SIGINT at its default in the child, as in a terminal, whatever this process
    inherited: a background job (`make test &`) ignores SIGINT, and an ignored signal stays ignored
    across exec while a handler is reset to the default."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, **options)
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.fixture(params=["inherited", "ignored"])
def parent_sigint(request):
    """This process's SIGINT disposition: as the test run inherited it, or ignored (a background job)."""
    if request.param == "ignored":
        inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
        yield
        signal.signal(signal.SIGINT, inherited)
    else:
        yield


def test_cli_watch_prints_one_json_line_per_message_off_a_terminal(environ, parent_sigint):
    server = start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2)
    process = interruptible([sys.executable, "-m", "client", "--target", server.target, "watch", A,
                             "--max-offers", "3", "--seconds", "60"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(process.stdout.readline())
        assert first["reason"] == "WATCH_REASON_INITIAL" and first["summary"]["customer_id"] == A
        assert sum(len(g.get("offers", [])) for g in first["answer"]["groups"]) == 3
        server.client.update_business_parameters({"fees": {"service_fee_pct": 0.03}})
        update = json.loads(process.stdout.readline())
        assert update["reason"] == "WATCH_REASON_CONFIGURATION"
        assert len(update.get("added", [])) == len(update.get("removed", []))  # still the best 3
        assert update.get("added") or update.get("changed")
        assert update["summary"]["config_version"] > first["summary"].get("config_version", 0)
        process.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert process.wait(timeout=30) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()


def test_watch_streams_leave_the_concurrent_call_limit_to_the_other_calls(environ):
    server = start_server(environ, TRADEUP_MAX_CONCURRENT_RPCS=1, TRADEUP_MAX_WATCHERS=3)
    try:
        held = [server.client.watch_offers(customer_id=customer) for customer in (A, B, C)]
        assert all(next(stream).reason == pb.WATCH_REASON_INITIAL for stream in held)
        assert offers_of(server.client.generate_offers(customer_id=D))  # the one ordinary slot is free
        for stream in held:
            stream.cancel()
        wait_for(lambda: server.app.watch.status()["watchers"] == 0)
    finally:
        server.stop()


def test_a_car_change_is_evaluated_only_for_the_watchers_it_can_concern(environ):
    server = start_server(environ)
    service = server.app.watch
    streams = []
    try:
        for request in ({"customer_id": A}, {"customer_id": A, "max_cars": 5}):
            streams.append(server.client.watch_offers(**request))
            next(streams[-1])
        groups = {g.query.max_cars: g for g in service._groups.values()}
        full, five = groups[0], groups[5]
        customer = full.customer
        snapshot = server.app.inventory.current()
        # The last car of the five (a group keeps the cars of its offers only: priced afresh).
        fifth = snapshot.by_id[server.app.offers.generate(five.query, Deadline.after(10)).offers.car_ids[-1]]
        car = dataclasses.replace(fifth, car_id="ZZ")
        cheaper = dataclasses.replace(car, regular_price=customer.current_car_price, promotion_price=None)
        older = dataclasses.replace(car, year=customer.current_car_year - 1)
        worn = dataclasses.replace(car, kilometers=customer.current_car_km)
        later = dataclasses.replace(car, year=fifth.year - 1)  # passes, but sorts after the fifth car
        assert service.touched([cheaper]) == service.touched([older]) == service.touched([worn]) == []
        assert service.touched([later]) == [full]
        assert set(map(id, service.touched([fifth]))) == {id(full), id(five)}
        assert set(map(id, service.touched([later, fifth]))) == {id(full), id(five)}
    finally:
        for stream in streams:
            stream.cancel()
        server.stop()


def test_watch_groups_are_keyed_by_their_filters_and_a_car_reaches_only_those_it_passes(environ):
    server = start_server(environ, TRADEUP_CHANGE_POLL_SECONDS=0.2)
    service = server.app.watch
    repository = open_repository(make_settings(environ))
    snapshot = server.app.inventory.snapshot()
    brand_of = lambda car: car.brand  # noqa: E731
    offered = [snapshot.by_id[o["car_id"]] for o in golden.offers_of(A)["offers"]]  # a reprice shows in these
    cars = [snapshot.by_id[car_id] for car_id in golden.offers_of(A)["cars"]]
    first = brand_of(offered[0])
    second = next(brand_of(car) for car in cars if brand_of(car) != first)
    watches = []
    try:
        for brands in ([first], [first.upper(), first.lower()], [second]):
            watches.append(Watch(server.client, customer_id=A, filters={"brands": brands}))
        groups = {g.query.filters.brands: g for g in service._groups.values()}
        assert len(groups) == 2 and len(groups[(first.lower(),)].watchers) == 2  # one group for both spellings
        mine, other = groups[(first.lower(),)], groups[(second.lower(),)]
        car = offered[0]
        assert service.touched([car]) == [mine]
        assert service.touched([dataclasses.replace(car, brand=second.upper())]) == [other]
        # The car repriced in the database: the watchers of its brand hear of it, the others not.
        repository.put_cars([dataclasses.replace(car, regular_price=car.regular_price + 1000.0)])
        applied([server], repository)
        for watch in watches[:2]:
            assert watch.follow(pb.WATCH_REASON_INVENTORY) is not None
        watches[2].quiet()
    finally:
        for watch in watches:
            watch.close()
        repository.database.close()
        server.stop()
