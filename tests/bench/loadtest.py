"""Load test with ghz (`make loadtest`; `make bench-growth` for inventory growth).

Starts a MariaDB with the demo data (TRADEUP_TEST_MYSQL_URL, else a private server), runs the
real server (`python -m server`) with 1 and then 2 worker processes, warms it up, and drives
ghz through server reflection (no .proto files) at several concurrency levels: the health
Check (the trivial-call ceiling), GenerateOffers for random demo customers (full responses, and
the top 50 offers), StreamOffers, and FindMinimumSubsidy on a sample. Every run is bounded by
a request count and a timeout; everything started is stopped at the end. The ghz JSON reports
go to results/; one table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port  # noqa: E402
from mariadb import MariaDBServer, binaries_available  # noqa: E402

RANDOM_CUSTOMER = '"customer_id":"{{printf `C%05d` (randomInt 1 5001)}}"'
# name, method, data, requests at concurrency 16/64 (a quarter at concurrency 1)
PROFILES = {
    "health": ("grpc.health.v1.Health/Check", "{}", 6000),
    "GenerateOffers": ("tradeup.v1.OfferService/GenerateOffers", "{" + RANDOM_CUSTOMER + "}", 1500),
    "GenerateOffers top50": ("tradeup.v1.OfferService/GenerateOffers",
                             "{" + RANDOM_CUSTOMER + ',"options":{"max_offers":50}}', 4000),
    "StreamOffers": ("tradeup.v1.OfferService/StreamOffers", "{" + RANDOM_CUSTOMER + "}", 1000),
    "FindMinimumSubsidy": ("tradeup.v1.OfferService/FindMinimumSubsidy",
                           '{"customer_id":"{{printf `C%05d` (randomInt 1 201)}}","max_cars":100}', 300),
}


def find_ghz() -> str:
    for candidate in (ROOT / "bin" / "ghz", shutil.which("ghz")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("ghz is missing: run `make tools` (it needs Go) to install pinned ghz, grpcurl and "
             "grpc_health_probe into ./bin")


def start_mariadb(workdir: Path):
    url = os.environ.get("TRADEUP_TEST_MYSQL_URL")
    if url:
        return url, None
    if not binaries_available():
        sys.exit("the load test needs MariaDB: install mariadb-server (make system-deps) or set TRADEUP_TEST_MYSQL_URL")
    server = MariaDBServer(workdir / "mariadb", free_port())
    server.start()
    server.create_database("loadtest", "loadtest", "loadtest-password")
    return f"mysql://loadtest:loadtest-password@127.0.0.1:{server.port}/loadtest", server


def seed(url: str, cars: int, customers: int = 5000) -> None:
    subprocess.run([sys.executable, "-m", "server", "seed", "--replace", "--cars", str(cars),
                    "--customers", str(customers)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "TRADEUP_DATABASE_URL": url, "TRADEUP_LOG_LEVEL": "WARNING"})


class Server:
    """`python -m server` with `processes` workers on MariaDB at `url`, or with url None on an
    embedded SQLite file in `workdir` (seeded with the demo data on first start)."""

    def __init__(self, url: str | None, processes: int, workdir: Path, command: list[str] | None = None):
        self.port = free_port()
        database = {"TRADEUP_DATABASE_URL": url, "TRADEUP_SEED_DEMO_DATA": "false"} if url else \
            {"TRADEUP_SQLITE_PATH": str(workdir / "bench.db"), "TRADEUP_SEED_DEMO_DATA": "true"}
        env = {**os.environ, **database, "TRADEUP_PROCESSES": str(processes),
               "TRADEUP_PORT": str(self.port), "TRADEUP_HOST": "127.0.0.1",
               "TRADEUP_MAX_CONCURRENT_RPCS": "1000"}
        self.process = subprocess.Popen(command or [sys.executable, "-m", "server"], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if "listening" not in self.process.stdout.readline():
            self.stop()
            raise RuntimeError("the server did not start")
        self.target = f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        extra = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *extra]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (every thread)."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def ghz(binary: str, target: str, method: str, data: str, requests: int, concurrency: int, report: Path,
        timeout: float = 120.0, extra: list[str] = ()) -> dict:
    """One bounded ghz run (`requests` calls, or as `extra` says, e.g. --rps and -z); its JSON report."""
    command = [binary, "--insecure", "--call", method, "-d", data, "-n", str(requests), "-c", str(concurrency),
               "--connections", str(min(concurrency, 8)), "--timeout", "20s", "--format", "json",
               "-o", str(report), *extra, target]
    subprocess.run(command, check=True, timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return json.loads(report.read_text())


def summarize(result: dict) -> dict:
    latency = {int(p["percentage"]): p["latency"] / 1e6 for p in result.get("latencyDistribution") or []}
    codes = result.get("statusCodeDistribution") or {}
    return {"rps": result["rps"], "p50": latency.get(50, 0.0), "p95": latency.get(95, 0.0),
            "p99": latency.get(99, 0.0), "errors": sum(v for k, v in codes.items() if k != "OK"),
            "count": result["count"]}


def peak_rss(server: Server, stop: threading.Event, peak: list[float]) -> None:
    while not stop.wait(0.2):
        peak[0] = max(peak[0], server.rss_mb())


def run_profiles(binary: str, server: Server, processes: int, concurrencies: list[int], results: Path,
                 names: list[str]) -> list[dict]:
    rows = []
    ghz(binary, server.target, PROFILES["GenerateOffers"][0], PROFILES["GenerateOffers"][1], 300, 8,
        results / "warmup.json")
    ceiling = {}
    for name in names:
        method, data, requests = PROFILES[name]
        for concurrency in concurrencies:
            count = max(50, requests // 4) if concurrency == 1 else requests
            stop, peak = threading.Event(), [server.rss_mb()]
            sampler = threading.Thread(target=peak_rss, args=(server, stop, peak))
            sampler.start()
            report = results / f"{name.replace(' ', '_')}-p{processes}-c{concurrency}.json"
            try:
                row = summarize(ghz(binary, server.target, method, data, count, concurrency, report))
            finally:
                stop.set()
                sampler.join()
            if name == "health":
                ceiling[concurrency] = row["rps"]
            row.update(rpc=name, concurrency=concurrency, processes=processes, rss=peak[0],
                       ceiling=row["rps"] / ceiling[concurrency] if concurrency in ceiling else 0.0)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (f"{'RPC':22} {'c':>3} {'proc':>4} {'rps':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'% ceiling':>9} {'RSS MB':>7}")


def format_row(r: dict) -> str:
    return (f"{r['rpc']:22} {r['concurrency']:>3} {r['processes']:>4} {r['rps']:>8.0f} {r['p50']:>8.1f} "
            f"{r['p95']:>8.1f} {r['p99']:>8.1f} {r['errors']:>6} {r['ceiling'] * 100:>8.0f}% {r['rss']:>7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", default="1,2", help="server process counts to compare")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rpcs", default=",".join(PROFILES), help="profiles to run")
    parser.add_argument("--growth", action="store_true",
                        help="instead: GenerateOffers p50/p99 at c=16 with 4,000, 20,000 and 100,000 cars")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where the ghz JSON reports go")
    args = parser.parse_args()
    binary = find_ghz()
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tradeup-load-") as tmp:
        url, mariadb = start_mariadb(Path(tmp))
        try:
            if args.growth:
                growth(binary, url, Path(tmp), results)
                return
            seed(url, 4000)
            print(f"ghz {args.concurrency} concurrent calls against MariaDB with 4,000 demo cars, 5,000 customers")
            print(HEADER)
            rows = []
            for processes in [int(p) for p in args.processes.split(",")]:
                server = Server(url, processes, Path(tmp))
                try:
                    rows += run_profiles(binary, server, processes, [int(c) for c in args.concurrency.split(",")],
                                         results, [n.strip() for n in args.rpcs.split(",")])
                finally:
                    server.stop()
            (results / "summary.json").write_text(json.dumps(rows, indent=1))
            print(f"\nReports in {results}/ (summary.json and one ghz report per run)")
        finally:
            if mariadb:
                mariadb.stop()


def growth(binary: str, url: str, workdir: Path, results: Path) -> None:
    method, data, _ = PROFILES["GenerateOffers top50"]
    print("GenerateOffers (top 50 offers), c=16, 1,500 calls, by inventory size")
    print(f"{'cars':>8} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for cars in (4000, 20000, 100000):
        seed(url, cars)
        server = Server(url, 1, workdir)
        try:
            ghz(binary, server.target, method, data, 300, 8, results / "warmup.json")
            row = summarize(ghz(binary, server.target, method, data, 1500, 16, results / f"growth-{cars}.json"))
        finally:
            server.stop()
        print(f"{cars:>8,} {row['rps']:>8.0f} {row['p50']:>8.1f} {row['p99']:>8.1f} {row['errors']:>6}", flush=True)


if __name__ == "__main__":
    main()
