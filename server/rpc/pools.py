"""Threads for long-lived streams apart from the ones serving ordinary calls.

The sync gRPC server runs every call on one executor and a server-streaming call holds its
thread for its whole life, so a thousand WatchOffers streams would take every worker from
GenerateOffers and fill `server.max_concurrent_rpcs`. `MethodRouter` is that executor: it hands
the named methods to a pool of their own (threads blocked on a Condition cost no CPU) and the
rest to the ordinary pool. For the named methods it gives gRPC back a future that is already
done: gRPC uses that future only to count calls against maximum_concurrent_rpcs, and these
streams have a limit of their own (server.max_watchers, enforced by the watch service).
"""
from __future__ import annotations

from concurrent import futures
from typing import Mapping


def _method_of(args: tuple) -> str | None:
    # grpc submits (context.run, behaviour, rpc_event, ...); the event names the method.
    for arg in args[:3]:
        method = getattr(getattr(arg, "call_details", None), "method", None)
        if method is not None:
            return method.decode() if isinstance(method, bytes) else method
    return None


class MethodRouter(futures.Executor):
    def __init__(self, default: futures.Executor, routes: Mapping[str, futures.Executor]):
        self.default = default
        self.routes = dict(routes)  # "/package.Service/Method" -> executor

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        pool = self.routes.get(_method_of(args)) if self.routes else None
        if pool is None:
            return self.default.submit(fn, *args, **kwargs)
        pool.submit(fn, *args, **kwargs)
        counted = futures.Future()  # not counted against maximum_concurrent_rpcs (see above)
        counted.set_result(None)
        return counted

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for pool in {id(p): p for p in (self.default, *self.routes.values())}.values():
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
