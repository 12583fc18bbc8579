"""Calls as ordinary callers make them: without a deadline, with retries, leaving streams idle or
unread. A real server on loopback over the golden data."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

import golden_data as golden
from client import OfferClient
from conftest import free_port, start_server
from protos.tradeup.v1 import admin_pb2, admin_pb2_grpc, offers_pb2 as pb, offers_pb2_grpc, search_pb2, search_pb2_grpc
from server.deadline import Deadline
from server.errors import DeadlineExceeded

ROOT = Path(__file__).resolve().parents[1]
STORED = golden.customer_with_offers()


def no_deadline_stub(target: str) -> tuple[grpc.Channel, offers_pb2_grpc.OfferServiceStub]:
    """A plain generated stub, as most callers use it: no deadline, no retry policy."""
    channel = grpc.insecure_channel(target)
    return channel, offers_pb2_grpc.OfferServiceStub(channel)


def test_deadline_value():
    deadline = Deadline.after(0.2)
    assert 0.1 < deadline.left() <= 0.2 and not deadline.expired()
    assert deadline.io_timeout(0.05) == 0.05 and deadline.sooner_than(1.0) and not deadline.sooner_than(0.05)
    lock = threading.Lock()
    lock.acquire()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="waiting for the lock"):
        deadline.acquire(lock, "the lock")
    assert 0.1 < time.monotonic() - started < 0.5
    assert deadline.expired() and deadline.left() == 0.0 and deadline.io_timeout(5) == 0.001
    with pytest.raises(DeadlineExceeded, match="deadline exceeded before pricing"):
        deadline.check("before pricing")


class Context:
    """What Deadline reads of a grpc ServicerContext."""

    def __init__(self, left):
        self.left = left

    def time_remaining(self):
        return self.left


def test_a_call_without_a_deadline_gets_the_default():
    assert 29.9 < Deadline.of_call(Context(None), 30).left() <= 30  # grpc's "none" in some versions
    assert 29.9 < Deadline.of_call(Context(9.2e18), 30).left() <= 30  # and in others
    assert 4.9 < Deadline.of_call(Context(5.0), 30).left() <= 5  # the caller's own, shorter or longer
    assert 99.9 < Deadline.of_call(Context(100.0), 30).left() <= 100
    assert Deadline.of_stream(Context(9.2e18)) is None


def test_every_rpc_answers_without_a_deadline(golden_database):
    """Each RPC, admin ones too, through a plain stub with no deadline, also after the inventory
    TTL has passed (the reload used to overflow a lock wait: INTERNAL)."""
    running = start_server(golden_database[1], TRADEUP_INVENTORY_TTL_SECONDS=1, TRADEUP_ADMIN_TOKEN="test-admin-token")
    channel, stub = no_deadline_stub(running.target)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    search = search_pb2_grpc.SearchServiceStub(channel)
    try:
        offers = len(golden.offers_of(STORED)["offers"])
        for round in range(2):
            assert stub.GenerateOffers(pb.GenerateOffersRequest(customer_id=STORED)).summary.total_offers == offers
            streamed = list(stub.StreamOffers(pb.StreamOffersRequest(customer_id=STORED)))
            assert sum(len(m.offers) for m in streamed) == offers
            bulk = list(stub.GenerateOffersBulk(iter([pb.GenerateOffersBulkRequest(customer_id=STORED)] * 2)))
            assert [b.offers.summary.total_offers for b in bulk] == [offers, offers]
            subsidy = list(stub.FindMinimumSubsidy(pb.FindMinimumSubsidyRequest(customer_id=STORED, max_cars=20)))
            assert subsidy[-1].cars_searched > 0
            offer = golden.offers_of(STORED)["offers"][0]
            table = stub.GetAmortizationTable(pb.GetAmortizationTableRequest(
                customer_id=STORED, car_id=offer["car_id"], term=offer["term"]))
            assert len(table.rows) == offer["term"]
            watch = stub.WatchOffers(pb.WatchOffersRequest(customer_id=STORED))
            assert next(watch).summary.total_offers == offers
            watch.cancel()
            assert search.SearchInventory(search_pb2.SearchInventoryRequest(query="audi")).total_size > 0
            assert search.InventoryFacets(search_pb2.InventoryFacetsRequest()).total_cars > 0
            assert search.SearchCustomers(search_pb2.SearchCustomersRequest(id_prefix=STORED)).customers
            token = (("authorization", "Bearer test-admin-token"),)
            assert admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=token).inventory_cars > 0
            assert admin.GetConfig(admin_pb2.GetConfigRequest(), metadata=token).config_version >= 0
            admin.GetConfigHistory(admin_pb2.GetConfigHistoryRequest(), metadata=token)
            assert admin.InvalidateCache(admin_pb2.InvalidateCacheRequest(), metadata=token).inventory_version > 0
            assert admin.UpdateBusinessParameters(admin_pb2.UpdateBusinessParametersRequest(
                changes=struct_pb2.Struct(fields={"fees": struct_pb2.Value(struct_value=struct_pb2.Struct(
                    fields={"service_fee_pct": struct_pb2.Value(number_value=0.04)}))})),
                metadata=token).config_version > 0
            time.sleep(1.2)  # past the TTL: the next round reloads the snapshot on its way
    finally:
        channel.close()
        running.stop()
        running.reset_config()


@pytest.mark.skipif(not (ROOT / "bin" / "grpcurl").exists() and not shutil.which("grpcurl"),
                    reason="grpcurl is not built (make tools)")
def test_grpcurl_without_max_time(golden_database):
    running = start_server(golden_database[1], TRADEUP_INVENTORY_TTL_SECONDS=1)
    grpcurl = str(ROOT / "bin" / "grpcurl") if (ROOT / "bin" / "grpcurl").exists() else shutil.which("grpcurl")
    try:
        for _ in range(2):
            done = subprocess.run([grpcurl, "-plaintext", "-d", f'{{"customer_id": "{STORED}"}}', running.target,
                                   "tradeup.v1.OfferService/GenerateOffers"], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
            assert f'"customer_id": "{STORED}"' in done.stdout
            time.sleep(1.2)
    finally:
        running.stop()


def test_request_id_travels_in_trailers_and_with_the_first_stream_message(golden_database):
    running = start_server(golden_database[1])
    try:
        stream = running.client.offers.StreamOffers(pb.StreamOffersRequest(customer_id=STORED),
                                                    metadata=(("x-request-id", "stream-1"),), timeout=10)
        list(stream)
        assert ("x-request-id", "stream-1") in stream.initial_metadata()
        assert ("x-request-id", "stream-1") in stream.trailing_metadata()
        with pytest.raises(grpc.RpcError) as err:
            running.client.generate_offers(customer_id="NOPE", metadata=(("x-request-id", "missing-1"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("x-request-id", "missing-1") in err.value.trailing_metadata()
        assert "x-request-id" not in dict(err.value.initial_metadata())  # a failure sent no headers
    finally:
        running.stop()


def attempts(running, method: str, code: str) -> float:
    """grpc_server_handled_total of one method and code, from the server's registry."""
    value = running.app.metrics.registry.get_sample_value(
        "grpc_server_handled_total", {"grpc_type": "unary", "grpc_service": "tradeup.v1.OfferService",
                                      "grpc_method": method, "grpc_code": code})
    return value or 0.0


def test_the_client_library_retries_unavailable(golden_database):
    """A server that answers UNAVAILABLE (here: draining) is tried maxAttempts times by the client
    library's policy; NOT_FOUND is not retried. Admin calls that change state are not retried."""
    running = start_server(golden_database[1])
    try:
        with pytest.raises(grpc.RpcError) as err:
            running.client.generate_offers(customer_id="NOPE")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert attempts(running, "GenerateOffers", "NOT_FOUND") == 1
        running.app.calls.admission.drain(0)
        with pytest.raises(grpc.RpcError) as err:
            running.client.generate_offers(customer_id=STORED)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert attempts(running, "GenerateOffers", "UNAVAILABLE") == 4  # the policy's maxAttempts
        changes = struct_pb2.Struct()
        with pytest.raises(grpc.RpcError) as err:
            running.client.admin.UpdateBusinessParameters(admin_pb2.UpdateBusinessParametersRequest(changes=changes),
                                                          metadata=running.client._admin_metadata(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        admin = running.app.metrics.registry.get_sample_value(
            "grpc_server_handled_total", {"grpc_type": "unary", "grpc_service": "tradeup.v1.AdminService",
                                          "grpc_method": "UpdateBusinessParameters", "grpc_code": "UNAVAILABLE"})
        assert admin == 1
    finally:
        running.stop()


def test_the_client_library_retries_a_unary_call_the_server_cancelled():
    """A unary call that ends CANCELLED from the server (one that reached a server closing after
    its drain, grpc/grpc#41785) is tried again by the library's policy, as UNAVAILABLE is."""
    from concurrent import futures
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    attempted = []

    class Closing(health_pb2_grpc.HealthServicer):
        def Check(self, request, context):
            attempted.append(request.service)
            if len(attempted) < 3:
                context.cancel()  # what the client sees of grpc's race: CANCELLED, no headers
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(Closing(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with OfferClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.health() == "SERVING" and len(attempted) == 3
    finally:
        server.stop(0)


def test_a_retried_call_succeeds_once_the_server_is_ready(golden_database):
    """Calls during start-up end UNAVAILABLE ("starting"); the library's retries carry a caller
    through when the server gets ready within the retry window."""
    running = start_server(golden_database[1])
    try:
        running.app.ready.clear()  # as during start-up
        results = []
        caller = threading.Thread(target=lambda: results.append(
            running.client.generate_offers(customer_id=STORED, max_offers=1)))
        caller.start()
        deadline = time.monotonic() + 5
        while attempts(running, "GenerateOffers", "UNAVAILABLE") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        running.app.ready.set()
        caller.join(10)
        assert results and results[0].summary.customer_id == STORED
        assert attempts(running, "GenerateOffers", "UNAVAILABLE") >= 1 and attempts(running, "GenerateOffers", "OK") == 1
    finally:
        running.stop()


def test_idle_streams_hold_nothing(golden_database):
    """64 bulk streams waiting for their client, 64 StreamOffers nobody reads and 64 watches open
    at once: unary calls are served with p99 within 2x of the quiet figure."""
    running = start_server(golden_database[1])
    release = threading.Event()
    calls = []
    wide = max(golden.customer_ids(), key=lambda c: len(golden.offers_of(c)["offers"]))

    def unary_p99(count: int = 300) -> float:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            running.client.generate_offers(customer_id=STORED, max_offers=10, timeout=10)
            times.append(time.perf_counter() - started)
        return sorted(times)[int(count * 0.99) - 1]

    def idle_bulk():
        yield pb.GenerateOffersBulkRequest(customer_id=STORED)
        release.wait(60)

    try:
        unary_p99(20)  # warm
        quiet = unary_p99()
        # A reader with a small flow-control window that never grows: the server's first message
        # of offers fills it, and the stream's thread waits on the reader from then on.
        channel = grpc.insecure_channel(running.target, options=[("grpc.http2.bdp_probe", 0),
                                                                 ("grpc.http2.lookahead_bytes", 1024)])
        stub = offers_pb2_grpc.OfferServiceStub(channel)
        for _ in range(64):
            bulk = stub.GenerateOffersBulk(idle_bulk(), timeout=60)
            next(bulk)
            calls.append(bulk)
            unread = stub.StreamOffers(pb.StreamOffersRequest(customer_id=wide), timeout=60)
            next(unread)  # then never read again: flow control stops the server's writes
            calls.append(unread)
            watch = stub.WatchOffers(pb.WatchOffersRequest(customer_id=STORED), timeout=60)
            next(watch)
            calls.append(watch)
        loaded = unary_p99()
        assert running.app.calls.admission.in_progress == 192
        print(f"unary p99: quiet {quiet * 1e3:.1f} ms, with 192 idle streams {loaded * 1e3:.1f} ms")
        assert loaded <= 2 * quiet + 0.005  # 5 ms of slack for timer noise on a sub-millisecond figure
    finally:
        release.set()
        for call in calls:
            call.cancel()
        running.stop()


def test_each_customer_of_a_bulk_stream_is_rate_limited(golden_database):
    running = start_server(golden_database[1], TRADEUP_RATE_LIMIT_PER_SECOND=0.001, TRADEUP_RATE_LIMIT_BURST=3)
    try:
        answered = []
        with pytest.raises(grpc.RpcError) as err:
            for response in running.client.generate_offers_bulk([{"customer_id": STORED}] * 5):
                answered.append(response.index)
        assert answered == [0, 1, 2]
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry-after-ms" in dict(err.value.trailing_metadata())
    finally:
        running.stop()


def test_stream_places_are_given_back_however_a_stream_ends(golden_database):
    """A stream that ends, fails, is refused or is cancelled mid-way by its client leaves the
    per-caller count as it was: the caller's next stream is admitted."""
    running = start_server(golden_database[1], TRADEUP_MAX_STREAMS_PER_CALLER=1, TRADEUP_STREAM_BATCH_SIZE=1)
    wide = max(golden.customer_ids(), key=lambda c: len(golden.offers_of(c)["offers"]))
    try:
        list(running.client.stream_offers(customer_id=STORED, max_offers=1))  # ends
        with pytest.raises(grpc.RpcError):  # fails
            list(running.client.stream_offers(customer_id="NOPE"))
        cancelled = running.client.stream_offers(customer_id=wide)
        next(cancelled)
        with pytest.raises(grpc.RpcError) as err:  # refused: the caller holds one already
            list(running.client.stream_offers(customer_id=STORED, max_offers=1))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        cancelled.cancel()  # mid-stream
        deadline = time.monotonic() + 5
        while running.app.calls.admission.in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.app.calls.admission.in_progress == 0
        assert len(list(running.client.stream_offers(customer_id=STORED, max_offers=1))) == 1
    finally:
        running.stop()


def test_client_library_target_free_port():
    """A client pointed at nothing fails UNAVAILABLE, without our trailers (how the CLI tells
    'cannot reach the server' from the server's own UNAVAILABLE)."""
    with OfferClient(f"127.0.0.1:{free_port()}", timeout=5) as client:  # beyond the retries' 0.7 s
        with pytest.raises(grpc.RpcError) as err:
            client.generate_offers(customer_id=STORED)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "x-request-id" not in dict(err.value.trailing_metadata() or ())
