"""The rpc layer alone, for `python -m tests.bench.bench_server --layers`: sync grpcio or
grpc.aio serving grpc.health.v1.Health/Check and OfferService/GenerateOffers with the service's
own logic and the same pre-encoded responses, no interceptors either way. With aio, the blocking
database and engine work runs on a bounded executor awaited with the call's deadline.

    python -m tests.bench.rpc_layers --layer aio     # port and database from TRADEUP_* as usual

`aio-inline` runs GenerateOffers on the event loop itself (no executor): the cost of the thread
hand-offs and of the GIL shared by concurrent calls, measured.
"""
from __future__ import annotations

import argparse
import asyncio
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos.tradeup.v1 import offers_pb2
from server.app import Application
from server.config import load_settings
from server.deadline import Deadline
from server.logs import configure_logging
from server.rpc import converters
from server.rpc.server import _pass_through

SERVING = health_pb2.HealthCheckResponse.SERVING
DEFAULT_DEADLINE = 30.0  # seconds, as the server's default


def generate(app: Application, request, deadline: Deadline) -> bytes:
    return converters.generate_response(app.offers.generate(converters.offer_query(request), deadline))


def offer_handler(behavior) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("tradeup.v1.OfferService", {
        "GenerateOffers": grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=offers_pb2.GenerateOffersRequest.FromString,
            response_serializer=_pass_through)})


def serve_sync(app: Application, address: str, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(workers))
    server.add_generic_rpc_handlers((offer_handler(lambda request, context: generate(
        app, request, Deadline.of_call(context, DEFAULT_DEADLINE))),))
    servicer = health.HealthServicer()
    servicer.set("", SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


async def serve_aio(app: Application, address: str, workers: int, inline: bool = False) -> None:
    pool = futures.ThreadPoolExecutor(workers)
    loop = asyncio.get_running_loop()

    async def generate_offers(request, context) -> bytes:
        deadline = Deadline.of_call(context, DEFAULT_DEADLINE)
        if inline:  # on the event loop itself: no thread hand-off, nothing else runs meanwhile
            return generate(app, request, deadline)
        return await asyncio.wait_for(loop.run_in_executor(pool, generate, app, request, deadline), deadline.left())

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((offer_handler(generate_offers),))
    servicer = health.aio.HealthServicer()
    await servicer.set("", SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(address)
    await server.start()
    print("listening", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", choices=("sync", "aio", "aio-inline"), required=True)
    args = parser.parse_args()
    settings = load_settings()
    configure_logging("WARNING", "json")
    app = Application(settings, address="127.0.0.1:0")  # its own grpc server is never started
    app.prepare_database()
    app.inventory.snapshot()
    address = f"{settings.server.host}:{settings.server.port}"
    workers = settings.server.max_workers
    if args.layer == "sync":
        serve_sync(app, address, workers)
    else:
        asyncio.run(serve_aio(app, address, workers, inline=args.layer == "aio-inline"))


if __name__ == "__main__":
    main()
