"""Server benchmark (`make bench-server`; BENCH_SECONDS=10 for longer cells).

In one run, for each database (the embedded SQLite file with the demo data, and MariaDB:
TRADEUP_TEST_MYSQL_URL, else a private server), each process count (1, 2) and each client
(ghz, the realistic one, with random demo customers; h2load, a C HTTP/2 client that costs the
shared CPU little, with one fixed customer), it drives every RPC for a few seconds at
concurrency 16 and prints requests/s, p50/p99, errors, the server's CPU time per call (from
/proc/<pid>/stat of the server processes, before and after each cell) and the rate as a share
of the health rate measured in the same run. Full responses are limited by ghz's decoding:
judge them by server CPU per call.

h2load counts HTTP 200s and cannot see gRPC's status (a trailer): each request body is first
sent once through a gRPC client, which must answer OK, and h2load's own failures count as
errors.

`--layers` instead compares the rpc layers alone (tests/bench/rpc_layers.py: sync grpcio, and
grpc.aio with the call on a thread pool or on its event loop, serving Health/Check and
GenerateOffers with the same service, no interceptors) with h2load, alternating, and prints each
one's rate against sync's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tests.bench.loadtest import RANDOM_CUSTOMER, Server, find_ghz, ghz, seed, start_mariadb, summarize  # noqa: E402

CONCURRENCY = 16
LAYERS = ("sync", "aio", "aio-inline")  # tests/bench/rpc_layers.py; sync first: the others are compared with it
FIXED_CUSTOMER = "C00042"
NARROW = '{"brands":["Mazda","Honda","Toyota"],"year_min":2020,"price_max":600000}'
WIDE = '{"year_min":1990,"exclude_brands":["Tesla"]}'
# name -> (method, ghz data with random customers, request message for h2load, streaming)
RPCS = {
    "health": ("grpc.health.v1.Health/Check", "{}", None, False),
    "GenerateOffers top50": ("tradeup.v1.OfferService/GenerateOffers",
                             "{" + RANDOM_CUSTOMER + ',"options":{"max_offers":50}}',
                             {"customer_id": FIXED_CUSTOMER, "options": {"max_offers": 50}}, False),
    # The same with consideration filters: a narrow one (a few dozen cars priced instead of 500) and
    # one every car passes (as many priced, plus the filter's cost).
    "GenerateOffers filtered": ("tradeup.v1.OfferService/GenerateOffers",
                                "{" + RANDOM_CUSTOMER + ',"options":{"max_offers":50},"filters":' + NARROW + "}",
                                {"customer_id": FIXED_CUSTOMER, "options": {"max_offers": 50},
                                 "filters": json.loads(NARROW)}, False),
    "GenerateOffers wide": ("tradeup.v1.OfferService/GenerateOffers",
                            "{" + RANDOM_CUSTOMER + ',"options":{"max_offers":50},"filters":' + WIDE + "}",
                            {"customer_id": FIXED_CUSTOMER, "options": {"max_offers": 50},
                             "filters": json.loads(WIDE)}, False),
    "GenerateOffers full": ("tradeup.v1.OfferService/GenerateOffers", "{" + RANDOM_CUSTOMER + "}",
                            {"customer_id": FIXED_CUSTOMER}, False),
    "StreamOffers": ("tradeup.v1.OfferService/StreamOffers", "{" + RANDOM_CUSTOMER + "}",
                     {"customer_id": FIXED_CUSTOMER}, True),
    "FindMinimumSubsidy": ("tradeup.v1.OfferService/FindMinimumSubsidy",
                           '{"customer_id":"{{printf `C%05d` (randomInt 1 201)}}","max_cars":100}',
                           {"customer_id": FIXED_CUSTOMER, "max_cars": 100}, True),
}


def request_message(method: str, fields: dict | None):
    """The request message of `method` (a health check when fields is None)."""
    from google.protobuf import json_format
    from grpc_health.v1 import health_pb2
    from protos.tradeup.v1 import offers_pb2
    if fields is None:
        return health_pb2.HealthCheckRequest()
    name = method.rsplit("/", 1)[1]
    message = getattr(offers_pb2, f"{name}Request")()
    return json_format.ParseDict(fields, message)


def grpc_frame(payload: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, the message."""
    return b"\0" + struct.pack(">I", len(payload)) + payload


def check_grpc_status(target: str, method: str, payload: bytes, streaming: bool) -> None:
    """The same request through a gRPC client: it must end OK (h2load cannot see grpc-status)."""
    import grpc
    with grpc.insecure_channel(target) as channel:
        path = "/" + method
        if streaming:
            list(channel.unary_stream(path)(payload, timeout=30))
        else:
            channel.unary_unary(path)(payload, timeout=30)


def h2load(target: str, method: str, body: Path, seconds: float, workdir: Path) -> dict:
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    command = ["h2load", "-D", f"{int(seconds * 1000)}ms", "-c", "8", "-m", str(CONCURRENCY // 8),
               "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
               "--log-file", str(log), f"http://{target}/{method}"]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
    done = succeeded = 0
    elapsed = seconds
    for line in output.splitlines():
        if line.startswith("finished in"):  # finished in 3.00s, 5000.00 req/s, ... (or 503.28ms)
            value = line.split()[2].rstrip(",")
            elapsed = float(value[:-2]) / 1e3 if value.endswith("ms") else float(value.rstrip("s"))
        if line.startswith("requests:"):  # requests: N total, N started, N done, N succeeded, N failed, ...
            parts = {kind: int(count) for count, kind in
                     (item.strip().split(" ", 1) for item in line.split(":", 1)[1].split(","))}
            done, succeeded = parts["done"], parts["succeeded"]
    latencies = sorted(int(row.split("\t")[2]) / 1e3 for row in log.read_text().splitlines() if row.strip())
    rate = succeeded / elapsed

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0
    return {"rps": rate, "p50": percentile(0.50), "p99": percentile(0.99), "errors": done - succeeded,
            "count": succeeded}


def run_cell(tool: str, binary: str, server: Server, name: str, seconds: float, workdir: Path) -> dict:
    method, data, fields, streaming = RPCS[name]
    before = server.cpu_seconds()
    if tool == "ghz":
        row = summarize(ghz(binary, server.target, method, data, 1, CONCURRENCY, workdir / "ghz.json",
                            timeout=seconds + 120, extra=["-z", f"{seconds}s", "--duration-stop=wait"]))
    else:
        payload = request_message(method, fields).SerializeToString()
        body = workdir / "body.bin"
        body.write_bytes(grpc_frame(payload))
        check_grpc_status(server.target, method, payload, streaming)
        before = server.cpu_seconds()
        row = h2load(server.target, method, body, seconds, workdir)
    used = server.cpu_seconds() - before
    row["cpu_ms"] = used * 1e3 / row["count"] if row["count"] else 0.0
    return row


HEADER = (f"{'database':8} {'proc':>4} {'client':6} {'RPC':22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'CPU ms/call':>11} {'/ health':>8} {'CPU/health':>10} {'p99/p50':>7} {'p99/health':>10}")
# The goals of GenerateOffers top 50, each a ratio to a figure of the same run: (name, value, limit, at least?)
GOALS = (("rate / health rate", lambda r: r["of_health"], 0.5, True),
         ("CPU per call / health's", lambda r: r["cpu_of_health"], 2.0, False),
         ("p99 / p50", lambda r: r["p99"] / r["p50"] if r["p50"] else float("inf"), 2.0, False),
         ("p99 / health p99", lambda r: r["p99_of_health"], 2.0, False))


def format_row(r: dict) -> str:
    return (f"{r['database']:8} {r['processes']:>4} {r['client']:6} {r['rpc']:22} {r['rps']:>8.0f} {r['p50']:>7.2f} "
            f"{r['p99']:>7.2f} {r['errors']:>6} {r['cpu_ms']:>11.3f} {r['of_health']:>7.0%} "
            f"{r['cpu_of_health']:>10.2f} {r['p99'] / r['p50'] if r['p50'] else 0:>7.2f} {r['p99_of_health']:>10.2f}")


def print_goals(rows: list[dict]) -> None:
    """Each goal of GenerateOffers top 50, per database, process count and client, met or not."""
    print("\nGoals of GenerateOffers top 50 (ratios to the health call of the same cell group):")
    for r in (r for r in rows if r["rpc"] == "GenerateOffers top50"):
        checks = []
        for name, value, limit, at_least in GOALS:
            v = value(r)
            met = v >= limit if at_least else v <= limit
            checks.append(f"{name} {v:.2f} ({'>=' if at_least else '<='} {limit:g}: {'met' if met else 'MISSED'})")
        print(f"  {r['database']} {r['processes']} proc {r['client']}: " + "; ".join(checks))


def bench(args, ghz_binary: str, workdir: Path) -> list[dict]:
    rows = []
    mariadb = None
    try:
        for database in args.databases.split(","):
            url = None
            if database == "mariadb":
                url, mariadb = start_mariadb(workdir)
                seed(url, 4000)
            for processes in [int(p) for p in args.processes.split(",")]:
                server = Server(url, processes, workdir)
                try:
                    ghz(ghz_binary, server.target, RPCS["GenerateOffers top50"][0], RPCS["GenerateOffers top50"][1],
                        1, 8, workdir / "warmup.json", extra=["-z", "1s", "--duration-stop=wait"])
                    for tool in args.clients.split(","):
                        health = None
                        for name in args.rpcs.split(","):
                            row = run_cell(tool, ghz_binary, server, name, args.seconds, workdir)
                            health = row if name == "health" else health
                            row.update(database=database, processes=processes, client=tool, rpc=name,
                                       of_health=row["rps"] / health["rps"] if health else 0.0,
                                       cpu_of_health=row["cpu_ms"] / health["cpu_ms"] if health else 0.0,
                                       p99_of_health=row["p99"] / health["p99"] if health else 0.0)
                            rows.append(row)
                            print(format_row(row), flush=True)
                finally:
                    server.stop()
    finally:
        if mariadb:
            mariadb.stop()
    return rows


def compare_layers(args, workdir: Path) -> list[dict]:
    """Sync grpcio against grpc.aio (the call on a thread pool, and on the event loop itself), the
    same service behind each, alternating runs."""
    servers = {layer: Server(None, 1, workdir, [sys.executable, "-m", "tests.bench.rpc_layers", "--layer", layer])
               for layer in LAYERS}
    rates: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for name in ("health", "GenerateOffers top50"):
                for layer, server in servers.items():
                    row = run_cell("h2load", "", server, name, args.seconds, workdir)
                    rates.setdefault((name, layer), []).append(row["rps"])
                    print(f"{layer:10} {name:22} {row['rps']:>8.0f} req/s  p50 {row['p50']:.2f} ms  "
                          f"p99 {row['p99']:.2f} ms  errors {row['errors']}  CPU {row['cpu_ms']:.3f} ms/call",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for name in ("health", "GenerateOffers top50"):
        sync = statistics.median(rates[(name, "sync")])
        row = {"rpc": name, "sync_rps": sync}
        for layer in LAYERS[1:]:
            rate = statistics.median(rates[(name, layer)])
            row[f"{layer}_rps"], row[f"{layer}_over_sync"] = rate, rate / sync
            print(f"{name:22} {layer}/sync = {rate / sync:.2f} (median of {args.rounds} alternating runs)")
        rows.append(row)
    return rows


def machine() -> str:
    """The CPU, its cores and how busy it was before the run (a benchmark wants a quiet machine)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = "AVX-512" if " avx512f" in cpuinfo else "no AVX-512"
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"machine: {model}, {os.cpu_count()} cores, {flags}; load average before the run {' '.join(load)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each cell")
    parser.add_argument("--databases", default="sqlite,mariadb")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--clients", default="ghz,h2load")
    parser.add_argument("--rpcs", default=",".join(RPCS), help="health first: the others are compared with it")
    parser.add_argument("--layers", action="store_true", help="instead: sync grpcio against grpc.aio")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per layer with --layers")
    parser.add_argument("--results", default=str(ROOT / "results"), help="where the JSON summary goes")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tradeup-bench-") as tmp:
        if args.layers:
            rows = compare_layers(args, Path(tmp))
            (results / "bench-layers.json").write_text(json.dumps(rows, indent=1))
            return
        binary = find_ghz()
        print(machine())
        print(f"concurrency {CONCURRENCY}, {args.seconds:g} s per cell; demo data (4,000 cars, 5,000 customers)")
        print(HEADER)
        rows = bench(args, binary, Path(tmp))
        print_goals(rows)
    (results / "bench-server.json").write_text(json.dumps(rows, indent=1))
    print(f"\nSummary in {results}/bench-server.json")


if __name__ == "__main__":
    main()
