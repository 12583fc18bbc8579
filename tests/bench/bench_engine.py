"""Engine benchmark over the golden customers (`make bench-engine`).

Prints the median and p95 time per customer for pricing 500 cars x 6 terms with the pure
twin, the compiled kernel on one thread and fanned out, their ratios, and the minimum-subsidy
search over every prefiltered car of a customer. Usage: python -m tests.bench.bench_engine [--customers N]
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


if __name__ == "__main__":
    main()
