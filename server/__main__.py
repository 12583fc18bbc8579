"""`python -m server [serve|migrate|seed]`: run the service, create the schema, load demo data."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import tracing
from .config import keys_markdown, load_settings
from .errors import ConfigError, Unavailable
from .logs import configure_logging

# server.app (gRPC, the engine) is imported where it is needed, once main() has installed the
# signal handlers: importing it takes most of a second, during which a signal would kill the
# process or end it with a traceback.
log = logging.getLogger("tradeup.server")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """SIGTERM and SIGINT ask the process to stop: `requested` is set and the `actions` run with
    the signal, on a thread of its own that reads the signal from Python's wakeup fd. Not in a
    Python handler: that runs only on the main thread, between two bytecodes, so not while the
    main thread sleeps in a wait the signal did not interrupt (the kernel may deliver it to any
    thread), and it may find the main thread holding a lock that setting an Event takes."""

    def __init__(self):
        self.requested = threading.Event()
        self.received: signal.Signals | None = None  # the first signal
        self.actions: list[Callable[[signal.Signals], None]] = []
        self._lock = threading.Lock()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # as set_wakeup_fd requires
        threading.Thread(target=self._listen, name="stop-signals", daemon=True).start()
        for signum in STOP_SIGNALS:
            signal.signal(signum, _noted)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def _listen(self) -> None:
        while True:
            signum = os.read(self._read, 1)[0]
            if signum in STOP_SIGNALS:
                self._request(signal.Signals(signum))

    def _request(self, signum: signal.Signals) -> None:
        with self._lock:
            if self.received is not None:  # the stop is under way (Ctrl-C reaches workers twice)
                return
            self.received = signum
        self.requested.set()
        for action in list(self.actions):
            action(signum)


def _noted(signum, frame) -> None:
    """The Python side of SIGTERM and SIGINT: nothing (StopSignals reads them from the wakeup fd)."""


def serve_one(settings, stop: StopSignals, worker: int | None = None, ready_fd: int | None = None) -> int:
    """Run one server process until SIGTERM/SIGINT; returns its exit status. A worker writes one
    byte to `ready_fd` once it serves."""
    from .app import Application
    app = Application(settings, tracing=tracing.Tracing.from_environment())  # in the process that serves

    def on_stop(signum: signal.Signals) -> None:
        log.info("received %s: draining for up to %ss", signum.name, settings.server.grace_seconds)
        app.stop()

    stop.actions.append(on_stop)  # on the signal's thread: draining begins at once
    if stop.requested.is_set():  # asked before the action was in place
        on_stop(stop.received)
    app.start(wait_ready=0)  # listening already (unless stopped); the banner follows the first database check
    while not (app.monitor.first_check.wait(0.05) or stop.requested.is_set()):
        pass
    if app.monitor.first_check.is_set():
        log.info("Trade-Up Engine listening on %s:%s (database: %s, engine: %s)",
                 reachable_host(settings.server.host), app.port, app.repository.backend, app.engine.implementation,
                 extra={"port": app.port, "metrics_port": app.metrics_port, "worker": worker})
        if ready_fd is None:
            print(banner(settings.server.host, app.port, 1), flush=True)
        else:
            os.write(ready_fd, b"!")
    if ready_fd is not None:
        os.close(ready_fd)
    app.stopped.wait()
    ended = app.stop()  # stopped already: whether every background thread ended
    log.info("stopped", extra={"worker": worker})
    if not ended:  # one waits on a stalled database: exit without finalizing the interpreter under it
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
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


def serve(settings, stop: StopSignals) -> int:
    processes = settings.server.processes
    if processes == 1:
        return serve_one(settings, stop)
    from .app import Application
    # Multi-core serving is processes: prepare the database once, then fork the workers before any
    # gRPC object exists; each builds its own server on the shared port (grpc's multiprocessing example).
    try:
        prepared = Application.prepare_shared(settings, stop.requested)
    except Exception as exc:  # serve anyway: each worker prepares it once the database answers
        prepared = {}
        if not stop.requested.is_set():
            log.warning("database not ready at start-up (%s): the workers will prepare it", exc)
    if stop.requested.is_set():  # before any worker: the seed in progress, if any, rolled back
        log.info("received %s before the workers started: stopped", stop.received.name)
        return 0
    held = reserve_port(settings.server.host, settings.server.port)
    port = held.getsockname()[1]
    server = replace(settings.server, port=port)
    ready_read, ready_write = os.pipe()
    workers = []

    def forward(signum: signal.Signals) -> None:
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # A signal waits while forking: a worker takes it with handlers of its own, the parent forwards it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for index in range(processes):
        metrics = server.metrics_port + index if server.metrics_port else 0
        pid = os.fork()
        if pid == 0:
            held.close()
            os.close(ready_read)
            code = 1
            try:
                own = StopSignals()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                code = serve_one(replace(settings, server=replace(server, metrics_port=metrics)), own, index,
                                 ready_write)
            except BaseException:  # os._exit below skips the interpreter's own report
                log.exception("worker %d failed", index)
                logging.shutdown()
            finally:
                os._exit(code)
        workers.append(pid)
    os.close(ready_write)
    stop.actions.append(forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    if stop.requested.is_set():  # asked before `forward` was in place
        forward(stop.received)
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
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    held.close()
    log.info("stopped", extra={"worker_exit_codes": statuses})
    return 0 if all(code == 0 for code in statuses) else 1


def main(argv: list[str] | None = None) -> int:
    stop = StopSignals()  # first: from here on, a signal is a request to stop
    parser = argparse.ArgumentParser(prog="python -m server", description="Trade-Up Engine gRPC service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC server (default)")
    sub.add_parser("migrate", help="create the schema if it does not exist")
    sub.add_parser("keys", help="print the configuration keys as a Markdown table")
    seed = sub.add_parser("seed", help="load the deterministic demo data (all of it or, if interrupted, none)")
    seed.add_argument("--cars", type=int, default=4000)
    seed.add_argument("--customers", type=int, default=5000)
    seed.add_argument("--replace", action="store_true", help="delete every car and customer first")
    args = parser.parse_args(argv)
    if args.command == "keys":
        print(keys_markdown())
        return 0
    try:
        settings = load_settings()
        tracing.requested()  # the OTEL_* variables are checked before any worker starts
    except ConfigError as exc:
        print(f"invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.server.log_level, settings.server.log_format)
    log.info("effective configuration", extra={"config": settings.to_dict(redact=True)})
    if args.command in (None, "serve"):
        return serve(settings, stop)
    from .app import open_repository
    from .data import demo
    repository = open_repository(settings)
    repository.migrate()
    if args.command == "seed":
        try:
            repository.seed(demo.demo_cars(args.cars), demo.demo_customers(args.customers), replace=args.replace,
                            stop=stop.requested)
        except Unavailable as exc:
            print(f"nothing loaded: {exc}", file=sys.stderr)
            return 1
        cars, customers = repository.counts()
        print(f"{repository.backend} database now holds {cars} cars and {customers} customers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
