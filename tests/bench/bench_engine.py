"""Engine benchmark over the golden customers (`make bench-engine`).

Prints the median and p95 time per customer for pricing 500 cars x 6 terms with the pure
twin, the compiled kernel on one thread and fanned out, their ratios, and the minimum-subsidy
search over every prefiltered car of a customer, then where fanning one request out over the
pool starts to pay (the crossover behind the engine's chunk settings).
Usage: python -m tests.bench.bench_engine [--customers N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import golden_data as golden  # noqa: E402
from engine_ext import Engine, load_kernel  # noqa: E402
from server.config import EngineSettings  # noqa: E402


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def summary(seconds: list[float]) -> tuple[float, float]:
    """Median and p95 (nearest rank) in milliseconds."""
    ordered = sorted(seconds)
    return statistics.median(ordered) * 1e3, ordered[max(0, -(-95 * len(ordered) // 100) - 1)] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=None, help="golden customers to run (default: all)")
    parser.add_argument("--twin-subsidy-customers", type=int, default=2,
                        help="customers for the twin's subsidy search (about 1 s each)")
    args = parser.parse_args()
    params = golden.params()
    # The server takes each car's rank by id from its inventory snapshot; so does the bench.
    by_id = {car: rank for rank, car in enumerate(sorted(golden.inventory()))}
    cases = []
    for record in golden.offers()[: args.customers]:
        ids = record["cars"]
        cases.append((golden.terms_of(golden.customers()[record["customer_id"]]), ids,
                      array("d", [golden.inventory()[car]["car_price"] for car in ids]),
                      array("l", [by_id[car] for car in ids])))
    twin, compiled = load_kernel("python"), load_kernel("compiled")
    workers = os.cpu_count() or 1
    engines = {
        "twin (pure Python)": Engine(twin, workers=1),
        "compiled, 1 thread": Engine(compiled, workers=1),
        f"compiled, fan-out over {workers} threads": Engine(compiled, workers=workers, offer_chunk_cars=64),
    }
    print(f"Pricing {len(cases)} golden customers, up to 500 cars x 6 terms each (best of 3 runs per customer; "
          f"goal: compiled, 1 thread <= 0.1 ms)")
    print(f"{'implementation':42} {'median ms':>10} {'p95 ms':>10} {'vs twin':>10}")
    medians = {}
    for name, engine in engines.items():
        times = [timed(lambda c=c: engine.price(c[0], c[1], c[2], params, car_rank=c[3]), 3) for c in cases]
        med, p95 = summary(times)
        medians[name] = med
        ratio = medians["twin (pure Python)"] / med
        print(f"{name:42} {med:10.3f} {p95:10.3f} {ratio:9.0f}x")
    print()
    print("Minimum-subsidy search over every prefiltered car of a customer (goal: compiled, 1 thread <= 5 ms)")
    sub = [timed(lambda c=c: engines["compiled, 1 thread"].minimum_subsidy(c[0], c[1], c[2], params), 1)
           for c in cases]
    fan = [timed(lambda c=c: engines[f"compiled, fan-out over {workers} threads"].minimum_subsidy(
        c[0], c[1], c[2], params), 1) for c in cases]
    twin_sub = [timed(lambda c=c: engines["twin (pure Python)"].minimum_subsidy(c[0], c[1], c[2], params), 1)
                for c in cases[: args.twin_subsidy_customers]]
    cars = statistics.median(len(c[1]) for c in cases)
    for name, times in ((f"twin ({len(twin_sub)} customers)", twin_sub), ("compiled, 1 thread", sub),
                        (f"compiled, fan-out over {workers} threads", fan)):
        med, p95 = summary(times)
        print(f"{name:42} {med:10.3f} {p95:10.3f} ms per customer (median {cars:.0f} cars)")
    print(f"{'compiled 1 thread vs twin':42} {statistics.median(twin_sub) / statistics.median(sub[:len(twin_sub)]):9.0f}x")
    for engine in engines.values():
        engine.close()
    print()
    crossover(cases, params, workers)


def crossover(cases: list, params, workers: int) -> None:
    """Where fanning one request out over the pool starts to pay, at the configured chunk sizes:
    the same cars on 1 thread and over `workers` threads, best of 5, as the car count grows."""
    defaults = EngineSettings()  # the production chunk sizes
    customer, ids, prices, ranks = max(cases, key=lambda c: len(c[1]))
    compiled = load_kernel("compiled")
    single, fanned = Engine(compiled, workers=1), Engine(compiled, workers=workers,
                                                           offer_chunk_cars=1, subsidy_chunk_cars=1)
    try:
        for kind, sizes, run, chunk in (
                ("pricing", (500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000),
                 lambda engine, n: engine.price(customer, many(ids, n), many(prices, n), params,
                                                car_rank=array("l", range(n))), defaults.offer_chunk_cars),
                ("subsidy search", (4, 8, 16, 32, 64, 128, 256),
                 lambda engine, n: engine.minimum_subsidy(customer, many(ids, n), many(prices, n), params),
                 defaults.subsidy_chunk_cars)):
            print(f"Fan-out of one {kind} over {workers} threads against 1 thread (setting: {chunk} cars a chunk)")
            print(f"{'cars':>8} {'1 thread ms':>12} {'fanned ms':>10} {'speed-up':>9}")
            pays = None
            for n in sizes:
                fanned.offer_chunk_cars = fanned.subsidy_chunk_cars = max(1, n // (2 * workers))
                alone, spread = timed(lambda: run(single, n), 5), timed(lambda: run(fanned, n), 5)
                pays = pays or (n if alone / spread > 1.1 else None)
                print(f"{n:>8} {alone * 1e3:>12.3f} {spread * 1e3:>10.3f} {alone / spread:>8.2f}x")
            print(f"fan-out pays (> 1.1x) from {pays or 'beyond ' + str(sizes[-1])} cars\n")
    finally:
        single.close()
        fanned.close()


def many(values, n: int):
    """`values` repeated up to n items (of the same type)."""
    return (values * (n // len(values) + 1))[:n]


if __name__ == "__main__":
    main()
