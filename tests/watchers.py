"""Many WatchOffers streams read by one grpc.aio event loop (tests and bench-watch)."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc

from protos.tradeup.v1 import offers_pb2 as pb, offers_pb2_grpc


class Watchers:
    """Many WatchOffers streams on a few connections, read by one event loop on its own thread.
    Times are time.monotonic(), the same clock in every process."""

    def __init__(self, target: str, customers: list[str], connections: int = 8, open_timeout: float = 600):
        self.loop = asyncio.new_event_loop()
        self.target, self.customers, self.connections = target, customers, connections
        self.initial: dict[int, pb.WatchOffersResponse] = {}
        self.arrivals: list[tuple[float, int, int]] = []  # (monotonic, watcher, reason) after INITIAL
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=open_timeout)

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
                    self.arrivals.append((time.monotonic(), k, message.reason))
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
