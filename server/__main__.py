"""`python -m server [serve|migrate|seed]`: run the service, create the schema, load demo data."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import threading
from dataclasses import replace
import logging
import signal
import sys
from pathlib import Path

from .app import Application, open_repository, seed_demo_data
from .config import keys_markdown, load_settings
from .errors import ConfigError
from .logs import configure_logging

log = logging.getLogger("tradeup.server")


def serve_one(settings, worker: int | None = None, ready_fd: int | None = None) -> int:
    """Run one server process until SIGTERM/SIGINT; returns its exit status. A worker writes one
    byte to `ready_fd` once it serves."""
    app = Application(settings)

    def on_signal(signum, frame):
        log.info("received %s: draining for up to %ss", signal.Signals(signum).name, settings.server.grace_seconds)
        threading.Thread(target=app.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start(wait_ready=None)  # listening already; the banner follows the first database check
    log.info("Trade-Up Engine listening on %s:%s (database: %s, engine: %s)", reachable_host(settings.server.host), app.port,
             app.repository.backend, app.engine.implementation,
             extra={"port": app.port, "metrics_port": app.metrics_port, "worker": worker})
    if ready_fd is None:
        print(banner(settings.server.host, app.port, 1), flush=True)
    else:
        os.write(ready_fd, b"!")
        os.close(ready_fd)
    app.stopped.wait()
    log.info("stopped", extra={"worker": worker})
    return 0


def reachable_host(host: str) -> str:
    """The host to call the server at: localhost for a wildcard, brackets around bare IPv6."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "localhost"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def banner(host: str, port: int, processes: int) -> str:
    """What to try first, as commands that work as printed from the directory the server was started
    in (the checkout, with `make run`): this interpreter runs the client, the checkout's `bin/grpcurl`
    (`make tools`) or one on the PATH calls it directly, and the address reaches the one bound: a
    wildcard host is reached at localhost."""
    def typed(path: str) -> str:  # relative to here when inside, as one would type it
        relative = os.path.relpath(path)
        return shlex.quote(path if relative.startswith("..") else relative)

    target = f"{reachable_host(host)}:{port}"
    lines = [f"Trade-Up Engine listening on {target} ({processes} process{'es' if processes > 1 else ''}). Try:",
             f"  {typed(sys.executable)} -m client --target {target} offers C00001"]
    checkout = Path(__file__).resolve().parents[1] / "bin" / "grpcurl"
    grpcurl = str(checkout) if checkout.exists() else shutil.which("grpcurl")
    if grpcurl:
        lines.append(f"  {typed(grpcurl)} -plaintext -d '{{\"customer_id\": \"C00001\"}}' {target} "
                     "tradeup.v1.OfferService/GenerateOffers")
    return "\n".join(lines)


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold the port (SO_REUSEPORT) so every worker binds the same one, even when port is 0."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def serve(settings) -> int:
    processes = settings.server.processes
    if processes == 1:
        return serve_one(settings)
    # Multi-core serving is processes: prepare the database once, then fork the workers before any
    # gRPC object exists; each builds its own server on the shared port (grpc's multiprocessing example).
    try:
        prepared = Application.prepare_shared(settings)
    except Exception as exc:  # serve anyway: each worker prepares it once the database answers
        log.warning("database not ready at start-up (%s): the workers will prepare it", exc)
        prepared = {}
    held = reserve_port(settings.server.host, settings.server.port)
    port = held.getsockname()[1]
    server = replace(settings.server, port=port)
    ready_read, ready_write = os.pipe()
    workers = []
    for index in range(processes):
        metrics = server.metrics_port + index if server.metrics_port else 0
        pid = os.fork()
        if pid == 0:
            held.close()
            os.close(ready_read)
            code = 1
            try:
                code = serve_one(replace(settings, server=replace(server, metrics_port=metrics)), index, ready_write)
            finally:
                os._exit(code)
        workers.append(pid)
    os.close(ready_write)
    ready = 0
    while ready < processes:  # one byte per worker once it serves; end of file if they all died
        chunk = os.read(ready_read, processes)
        if not chunk:
            break
        ready += len(chunk)
    os.close(ready_read)
    log.info("%d of %d worker processes serving on port %d", ready, processes, port,
             extra={"workers": workers, **prepared})
    if ready == processes:
        print(banner(settings.server.host, port, processes), flush=True)

    def forward(signum, frame):
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    held.close()
    log.info("stopped", extra={"worker_exit_codes": statuses})
    return 0 if all(code == 0 for code in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="Trade-Up Engine gRPC service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    sub.add_parser("migrate", help="create the schema if it does not exist")
    sub.add_parser("keys", help="print the configuration keys as a Markdown table")
    seed = sub.add_parser("seed", help="load the deterministic demo data")
    seed.add_argument("--cars", type=int, default=4000)
    seed.add_argument("--customers", type=int, default=5000)
    seed.add_argument("--replace", action="store_true", help="delete every car and customer first")
    args = parser.parse_args(argv)
    if args.command == "keys":
        print(keys_markdown())
        return 0
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level, settings.server.log_format)
    log.info("effective configuration", extra={"config": settings.to_dict(redact=True)})
    if args.command in (None, "serve"):
        return serve(settings)
    repository = open_repository(settings)
    repository.migrate()
    if args.command == "seed":
        if args.replace:
            repository.delete_all()
        seed_demo_data(repository, args.cars, args.customers)
        cars, customers = repository.counts()
        print(f"{repository.backend} database now holds {cars} cars and {customers} customers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
