"""Soak test (`make soak`, `make soak MINUTES=2`): constant load at about 80 % of the measured
capacity for a while, against the real server on MariaDB with the demo data. Reports, per
minute, requests, errors, p50/p99 and server RSS, then the RSS growth. Bounded: it stops by
itself after the given minutes and stops everything it started."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.bench.loadtest import PROFILES, ROOT, Server, find_ghz, ghz, seed, start_mariadb, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()
    binary = find_ghz()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    method, data, _ = PROFILES["GenerateOffers top50"]
    with tempfile.TemporaryDirectory(prefix="tradeup-soak-") as tmp:
        url, mariadb = start_mariadb(Path(tmp))
        server = None
        try:
            seed(url, 4000)
            server = Server(url, args.processes, Path(tmp))
            ghz(binary, server.target, method, data, 500, 16, results / "soak-warmup.json")
            capacity = summarize(ghz(binary, server.target, method, data, 2000, 16, results / "soak-capacity.json"))
            rate = max(1, int(capacity["rps"] * args.load))
            print(f"capacity {capacity['rps']:.0f} req/s (GenerateOffers top 50, c=16); soaking at {rate} req/s "
                  f"for {args.minutes:g} min")
            print(f"{'minute':>6} {'requests':>9} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7}")
            rows = []
            chunks = max(1, round(args.minutes))
            seconds = args.minutes * 60 / chunks
            for minute in range(1, chunks + 1):
                report = results / f"soak-{minute:02d}.json"
                # A fixed count at a fixed rate (not -z): ghz then waits for every call to finish
                # instead of cutting the calls in flight when the time is up.
                command_result = ghz(binary, server.target, method, data, int(rate * seconds), 16, report,
                                     timeout=seconds * 2 + 60, extra=["--rps", str(rate)])
                row = {**summarize(command_result), "minute": minute, "rss": server.rss_mb()}
                rows.append(row)
                print(f"{minute:>6} {row['count']:>9} {row['errors']:>6} {row['p50']:>8.1f} {row['p99']:>8.1f} "
                      f"{row['rss']:>7.1f}", flush=True)
            growth = (rows[-1]["rss"] - rows[0]["rss"]) / rows[0]["rss"]
            errors = sum(r["errors"] for r in rows)
            print(f"errors {errors}; RSS {rows[0]['rss']:.1f} -> {rows[-1]['rss']:.1f} MB ({growth:+.1%}); "
                  f"worst p99 {max(r['p99'] for r in rows):.1f} ms")
            (results / "soak.json").write_text(json.dumps({"rate": rate, "rows": rows, "rss_growth": growth}, indent=1))
        finally:
            if server:
                server.stop()
            if mariadb:
                mariadb.stop()


if __name__ == "__main__":
    main()
