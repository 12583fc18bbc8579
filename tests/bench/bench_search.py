"""Search benchmark (`make bench-search`): SearchService at 100,000 cars, median and p95 per call.

An embedded SQLite file holds 100,000 demo cars and 20,000 customers; the service answers from
the real inventory cache, as the server does (the gRPC layer adds its own ~0.3 ms). Times:
  first calls    a page by price, then one by words, on a new snapshot (they build the index parts)
  facets         InventoryFacets: all cars, under filters, under words
  page           SearchInventory, 50 cars: first page, sorted, filtered, words, a deep page by token
  customers      SearchCustomers, 50 customers: by id prefix, by region and risk profile, by text
Goals (median, on a quiet machine): facets <= 20 ms, a page <= 5 ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_settings  # noqa: E402
from engine_ext import load_kernel  # noqa: E402
from server.app import open_repository  # noqa: E402
from server.data import demo  # noqa: E402
from server.data.filters import ConsiderationFilters  # noqa: E402
from server.data.inventory import InventoryCache  # noqa: E402
from server.deadline import Deadline  # noqa: E402
from server.services.search import CustomerQuery, InventoryQuery, SearchService  # noqa: E402
from server.services.workers import Workers  # noqa: E402

GOALS_MS = {"facets": 20.0, "page": 5.0}


def timed(call, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def line(label: str, seconds: list[float], goal: float | None = None) -> str:
    ordered = sorted(seconds)
    median, p95 = statistics.median(ordered) * 1e3, ordered[max(0, -(-95 * len(ordered) // 100) - 1)] * 1e3
    verdict = "" if goal is None else ("  ok" if median <= goal else f"  ABOVE the goal of {goal:g} ms")
    return f"  {label:44} {median:8.3f} {p95:8.3f}{verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cars", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = open_repository(make_settings({"TRADEUP_SQLITE_PATH": f"{folder}/bench.db"}))
        repository.migrate()
        repository.seed(demo.demo_cars(args.cars), demo.demo_customers(20_000), replace=True)
        cache = InventoryCache(repository, ttl_seconds=3600, prefilter_entries=10)
        service = SearchService(repository, cache, Workers(4), load_kernel())
        deadline = lambda: Deadline.after(30)  # noqa: E731
        snapshot = cache.snapshot(deadline())
        print(f"{len(snapshot):,} available cars; median and p95 of {args.repeat} calls, ms "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        # The first calls on a new snapshot build the parts of the index they need, once.
        for label, query in (("first page by price after a change", InventoryQuery(order_by="price desc")),
                             ("then the first page by words", InventoryQuery(text="mazda 3"))):
            (seconds,) = timed(lambda: service.search_inventory(query, deadline()), 1)
            print(f"  {label:44} {seconds * 1e3:8.1f}")
        filters = ConsiderationFilters(price_min=250_000, price_max=600_000, brands=("mazda", "toyota"), year_min=2019)
        for label, text, chosen in (("facets, all cars", "", ConsiderationFilters()),
                                    ("facets, 2 brands, price and year range", "", filters),
                                    ('facets, words "mazda 3"', "mazda 3", ConsiderationFilters())):
            print(line(label, timed(lambda: service.facets(text, chosen, deadline()), args.repeat), GOALS_MS["facets"]))
        deep = InventoryQuery(order_by="price desc")
        for _ in range(20):  # a token 20 pages in
            deep = replace(deep, page_token=service.search_inventory(deep, deadline()).next_page_token)
        for label, query in (("page, first, by car id", InventoryQuery()),
                             ("page, by price desc", InventoryQuery(order_by="price desc")),
                             ("page, filtered, by kilometers", InventoryQuery(filters=filters, order_by="kilometers")),
                             ('page, words "mazda 3", by year desc', InventoryQuery(text="mazda 3", order_by="year desc")),
                             ("page 21 by price desc (token)", deep)):
            print(line(label, timed(lambda: service.search_inventory(query, deadline()), args.repeat), GOALS_MS["page"]))
        for label, query in (("customers, id prefix C01", CustomerQuery(id_prefix="C01")),
                             ("customers, region and risk", CustomerQuery(region="Puebla", risk_profile="B")),
                             ("customers, text", CustomerQuery(text="ueb"))):
            print(line(label, timed(lambda: service.search_customers(query, deadline()), args.repeat)))
        repository.database.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
