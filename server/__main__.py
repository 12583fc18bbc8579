"""`python -m server [serve|migrate|seed]`: run the service, create the schema, load demo data."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from .app import Application, open_repository, seed_demo_data
from .config import keys_markdown, load_settings
from .errors import ConfigError
from .logs import configure_logging

log = logging.getLogger("tradeup.server")


def serve(settings) -> int:
    app = Application(settings)

    def on_signal(signum, frame):
        log.info("received %s: draining for up to %ss", signal.Signals(signum).name, settings.server.grace_seconds)
        app.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    target = f"localhost:{app.port}"
    log.info("Trade-Up Engine listening on %s (database: %s, engine: %s)", target, app.repository.backend,
             app.engine.implementation, extra={"port": app.port, "metrics_port": app.metrics_port})
    print(f"Trade-Up Engine listening on {target}. Try:\n"
          f"  python -m client --target {target} offers C00001\n"
          f"  grpcurl -plaintext -d '{{\"customer_id\": \"C00001\"}}' {target} tradeup.v1.OfferService/GenerateOffers",
          flush=True)
    app.stopped.wait()
    log.info("stopped")
    return 0


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
