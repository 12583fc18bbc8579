"""A fleet on loopback: N server instances (`python -m server`, each with TRADEUP_PROCESSES workers
on its own port) over one database, optionally with Redis; and the probes that measure how long a
change takes to reach every worker. Used by tests/test_fleet.py and tests/bench/bench_fleet.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import grpc

from client import OfferClient
from protos.tradeup.v1 import offers_pb2 as pb, offers_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "fleet-admin-token"


def fee_of(response: pb.GenerateOffersResponse) -> float:
    """The service fee rate an answer was priced with (its first offer's fee over its car's price)."""
    import golden_data as golden
    offer = next(o for g in response.groups for o in g.offers)
    return offer.service_fee_amount / golden.inventory()[offer.car_id]["car_price"]


class Fleet:
    def __init__(self, environ: dict[str, str], ports: list[int], customer_id: str, processes: int = 2):
        """`customer_id`: the stored customer every call prices (it needs an offer to read the fee from)."""
        self.environ = environ
        self.customer_id = customer_id
        self.ports = ports
        self.processes = processes
        self.children: list[subprocess.Popen] = []

    @property
    def target(self) -> str:
        """Every instance, for a client-side round_robin channel."""
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, timeout: float = 120.0) -> None:
        for port in self.ports:
            env = {**os.environ, **self.environ, "TRADEUP_PORT": str(port), "TRADEUP_HOST": "127.0.0.1",
                   "TRADEUP_PROCESSES": str(self.processes), "TRADEUP_ADMIN_TOKEN": ADMIN_TOKEN,
                   "TRADEUP_SEED_DEMO_DATA": "false", "TRADEUP_LOG_LEVEL": "WARNING"}
            self.children.append(subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        for child in self.children:  # the banner is printed once every worker serves
            line = child.stdout.readline()
            if f"({self.processes} processes)" not in line and "(1 process)" not in line:
                raise RuntimeError(f"a server instance did not start: {line!r}")

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children = []

    def admin(self, index: int = 0) -> OfferClient:
        """A client of one instance (the caller closes it)."""
        return OfferClient(f"127.0.0.1:{self.ports[index]}", timeout=30, admin_token=ADMIN_TOKEN)

    def call(self, timeout: float = 30.0) -> pb.GenerateOffersResponse:
        """One GenerateOffers on a fresh round_robin channel over every instance: a new connection,
        so the kernel hands it to any worker of the instance it reaches."""
        with grpc.insecure_channel(self.target, options=[("grpc.lb_policy_name", "round_robin")]) as channel:
            stub = offers_pb2_grpc.OfferServiceStub(channel)
            return stub.GenerateOffers(pb.GenerateOffersRequest(customer_id=self.customer_id,
                                                                options=pb.OfferOptions(max_offers=1)),
                                       timeout=timeout)

    def propagation(self, changed: Callable[[pb.GenerateOffersResponse], bool], since: float,
                    consecutive: int = 100, timeout: float = 120.0) -> tuple[float, int]:
        """Call until `consecutive` calls in a row show the change. Returns (seconds from `since`
        to the last call that did not show it, or to the first that did; calls made)."""
        last_stale, first_fresh, streak, calls = None, None, 0, 0
        deadline = time.monotonic() + timeout
        while streak < consecutive:
            if time.monotonic() > deadline:
                raise AssertionError(f"{consecutive} calls in a row did not show the change within {timeout} s")
            response = self.call()
            now = time.monotonic()
            calls += 1
            if changed(response):
                streak += 1
                first_fresh = first_fresh or now
            else:
                streak, last_stale = 0, now
        return max((last_stale or first_fresh) - since, 0.0), calls
