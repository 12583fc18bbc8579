"""`tradeup` / `python -m client`: the command line over OfferClient."""
from __future__ import annotations

import argparse
import getpass
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

import grpc
from google.protobuf import json_format

from protos.tradeup.v1 import offers_pb2 as pb

from .library import TIERS, ErrorDetails, LiveOffers, OfferClient, error_details, for_seconds

TIER_TITLES = {pb.TIER_REFRESH: "Refresh", pb.TIER_UPGRADE: "Upgrade", pb.TIER_MAX_UPGRADE: "Max Upgrade"}
OVERRIDE_FLAGS = (("service_fee_pct", "--service-fee", "service fee, fraction of the price"),
                  ("cxa_pct", "--cxa", "opening fee, fraction of the price"),
                  ("cac_bonus", "--cac", "customer bonus, MXN"),
                  ("kavak_total_amount", "--kavak-total", "Kavak Total amount, MXN"),
                  ("insurance_amount", "--insurance", "annual insurance, MXN"),
                  ("interest_rate", "--rate", "annual rate (fraction, or percent above 1)"))
# ConsiderationFilters fields: (field, flag, kind, help); list: the flag repeats, bool: a switch.
FILTER_FLAGS = (("price_min", "--price-min", float, "financing price at least this, MXN"),
                ("price_max", "--price-max", float, "financing price at most this, MXN"),
                ("max_price_vs_current", "--max-price-vs-current", float,
                 "price at most this ratio of the current car's value"),
                ("brands", "--brand", list, "this brand (repeat for any of several)"),
                ("exclude_brands", "--exclude-brand", list, "not this brand (repeat)"),
                ("same_brand_as_current", "--same-brand", bool, "the current car's brand only"),
                ("other_brand_than_current", "--other-brand", bool, "any brand but the current car's"),
                ("year_min", "--year-min", int, "model year at least this"),
                ("year_max", "--year-max", int, "model year at most this"),
                ("km_max", "--km-max", int, "odometer at most this, km"),
                ("max_km_vs_current", "--max-km-vs-current", float, "odometer at most this ratio of the current car's"),
                ("promotion_only", "--promotion-only", bool, "cars on promotion only"),
                ("regions", "--region", list, "cars in this region (repeat for any of several)"),
                ("colors", "--color", list, "cars of this colour (repeat for any of several)"))


def _as_json(message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1)


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _overrides(args) -> dict:
    return {name: getattr(args, name) for name, _, _ in OVERRIDE_FLAGS if getattr(args, name) is not None}


def _filters(args) -> dict:
    """The filter flags given: an unset flag is None (or False for --promotion-only); 0 is a value."""
    given = {name: getattr(args, name) for name, _, _, _ in FILTER_FLAGS}
    return {name: value for name, value in given.items() if value is not None and value is not False}


PROFILE_FIELDS = tuple(f.name for f in pb.CustomerProfile.DESCRIPTOR.fields)


class UsageError(Exception):
    """A mistake on the command line: printed without a traceback, exit status 2."""


def _json_object(text: str, what: str, expected: str) -> dict:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{what}: invalid JSON: {err}") from None
    if not isinstance(document, dict):
        raise UsageError(f"{what}: give {expected}")
    return document


def _customer(args) -> dict:
    if not args.profile:
        return {"customer_id": args.customer}
    profile = _json_object(args.profile, "--profile", "a JSON object of CustomerProfile fields")
    unknown = sorted(set(profile) - set(PROFILE_FIELDS))
    if unknown:
        raise UsageError(f"--profile: unknown field {unknown[0]!r} (fields: {', '.join(PROFILE_FIELDS)})")
    try:
        return {"profile": json_format.ParseDict(profile, pb.CustomerProfile())}
    except json_format.ParseError as err:
        raise UsageError(f"--profile: {err}") from None


def _whole(minimum: int):
    """An argparse type: a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a duration, finite and above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def _offer_table(offers: Sequence[pb.Offer]) -> list[str]:
    lines = [f"  {'car':10} {'term':>4} {'monthly MXN':>12} {'delta':>8} {'financed MXN':>13} {'npv MXN':>10} {'rate':>7}"]
    for o in offers:
        lines.append(f"  {o.car_id:10} {o.term:>4} {_money(o.monthly_payment):>12} {o.payment_delta:>+8.2%} "
                     f"{_money(o.loan_amount):>13} {_money(o.npv):>10} {o.interest_rate:>7.2%}")
    return lines


def _summary_line(summary: pb.OfferSummary) -> str:
    t = summary.timing
    return (f"Customer {summary.customer_id or '(inline profile)'}: {summary.cars_evaluated} cars evaluated, {summary.total_offers} offers "
            f"(Refresh {summary.refresh_count}, Upgrade {summary.upgrade_count}, Max Upgrade "
            f"{summary.max_upgrade_count}); server {t.total_ms:.1f} ms (database {t.database_ms:.1f}, "
            f"engine {t.engine_ms:.1f})")


def cmd_offers(client: OfferClient, args) -> int:
    response = client.generate_offers(**_customer(args), overrides=_overrides(args), terms=args.terms or (),
                                      tiers=args.tiers or (), max_offers=args.max_offers,
                                      same_region=args.same_region, max_cars=args.max_cars, filters=_filters(args))
    if args.json:
        print(_as_json(response))
        return 0
    print(_summary_line(response.summary))
    for group in response.groups:
        shown = group.offers[: args.per_tier]
        print(f"\n{TIER_TITLES[group.tier]}: {group.count} offers" +
              (f", best {len(shown)} shown" if len(shown) < group.count else ""))
        if shown:
            print("\n".join(_offer_table(shown)))
    return 0


def _customer_ids(args) -> list[str]:
    """Ids from the arguments, then from --file: one a line, `#` starts a comment."""
    ids = list(args.customers)
    if args.file:
        try:
            text = Path(args.file).read_text()
        except OSError as err:
            raise UsageError(f"--file: cannot read {args.file}: {err.strerror}") from None
        ids += [bare for line in text.splitlines() if (bare := line.split("#", 1)[0].strip())]
    return ids


class Progress:
    """A progress line on stderr, cleared before each result is printed (stdout and stderr often
    share one terminal) and drawn again after it."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.shown = total, enabled, 0

    def clear(self) -> None:
        if self.enabled and self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()
            self.shown = 0

    def draw(self, done: int, errors: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} customers, {errors} errors"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
        self.shown = len(line)

    def finish(self) -> None:
        if self.enabled and self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_bulk(client: OfferClient, args) -> int:
    ids = _customer_ids(args)
    if not ids:
        print("bulk: give customer ids as arguments or with --file", file=sys.stderr)
        return 2
    requests = ({"customer_id": c, "max_offers": args.max_offers, "filters": _filters(args)} for c in ids)
    errors = 0
    progress = Progress(len(ids), args.progress or (sys.stderr.isatty() and not args.json))
    for done, item in enumerate(client.generate_offers_bulk(requests, timeout=args.timeout * len(ids)), 1):
        if item.WhichOneof("result") == "error":
            errors += 1
        progress.clear()
        if args.json:
            line = json_format.MessageToDict(item, preserving_proto_field_name=True)
            print(json.dumps({"index": item.index, **line}))  # index 0 too: every line has the same keys
        elif item.WhichOneof("result") == "error":
            print(f"{item.customer_id or '#' + str(item.index)}: {item.error.code} {item.error.message}")
        else:
            s = item.offers.summary
            print(f"{item.customer_id}: {s.total_offers} offers (Refresh {s.refresh_count}, Upgrade "
                  f"{s.upgrade_count}, Max Upgrade {s.max_upgrade_count}) from {s.cars_evaluated} cars")
        sys.stdout.flush()
        progress.draw(done, errors)
    progress.finish()
    return 1 if errors else 0


# The subsidy command's grid flags: (SubsidySearchGrid field, flag, help).
GRID_FLAGS = (("service_fee_max", "--grid-service-fee-max", "first service fee tried, fraction"),
              ("service_fee_min", "--grid-service-fee-min", "last service fee tried, fraction"),
              ("service_fee_step", "--grid-service-fee-step", "service fee step, fraction"),
              ("cac_min", "--grid-cac-min", "first customer bonus tried, MXN"),
              ("cac_max", "--grid-cac-max", "last customer bonus tried, MXN"),
              ("cac_step", "--grid-cac-step", "customer bonus step, MXN"),
              ("cxa_max", "--grid-cxa-max", "first opening fee tried, fraction"),
              ("cxa_min", "--grid-cxa-min", "last opening fee tried, fraction"),
              ("cxa_step", "--grid-cxa-step", "opening fee step, fraction"),
              ("kavak_total_amount", "--grid-kavak-total", "Kavak Total in the search, MXN"))


def _grid(args) -> dict:
    grid = {name: getattr(args, name) for name, _, _ in GRID_FLAGS if getattr(args, name) is not None}
    if args.grid_kavak_total_enabled is not None:
        grid["kavak_total_enabled"] = args.grid_kavak_total_enabled == "on"
    return grid


def _subsidy_rows(rows: Iterable[pb.SubsidyResult]) -> list[str]:
    lines = [f"  {'car':10} {'outcome':24} {'term':>4} {'fee':>6} {'bonus MXN':>10} {'cxa':>6} "
             f"{'monthly MXN':>12} {'delta':>8} {'npv MXN':>10} {'tried':>6}"]
    for r in rows:
        outcome = pb.SubsidyOutcome.Name(r.outcome).removeprefix("SUBSIDY_OUTCOME_")
        lines.append(f"  {r.car_id:10} {outcome:24} {r.term:>4} {r.service_fee_pct:>6.1%} {_money(r.cac_bonus):>10} "
                     f"{r.cxa_pct:>6.1%} {_money(r.monthly_payment):>12} {r.payment_delta:>+8.2%} {_money(r.npv):>10} "
                     f"{r.iterations_tried:>6}")
    return lines


def cmd_subsidy(client: OfferClient, args) -> int:
    stream = client.find_minimum_subsidy(**_customer(args), car_ids=args.cars or (), overrides=_overrides(args),
                                         same_region=args.same_region, max_cars=args.max_cars, filters=_filters(args),
                                         grid=_grid(args), max_viable=args.max_viable)
    rows: list[pb.SubsidyResult] = []
    last = None
    for message in stream:
        rows.extend(message.results)
        last = message
    if args.json:
        print(json.dumps([json_format.MessageToDict(r, preserving_proto_field_name=True) for r in rows], indent=1))
        return 0
    s = last.summary if last else pb.SubsidySummary()
    print(f"{s.viable} of {s.searched} cars viable ({s.candidates} candidates, {s.iterations:,} combinations tried)")
    if args.all:
        tables = (("Every car searched, in search order", rows[:args.limit]),)
    else:
        tables = (("Viable, best npv first", s.best_viable[:args.limit]),
                  ("Nearest misses, smallest payment delta first", s.nearest_misses))
    for title, shown in tables:
        if shown:
            print(f"{title} ({len(shown)} shown):")
            print("\n".join(_subsidy_rows(shown)))
    return 0


def cmd_search(client: OfferClient, args) -> int:
    response = client.search_inventory(" ".join(args.words), _filters(args), order_by=args.order_by,
                                       page_size=args.page_size, page_token=args.page_token)
    if args.json:
        print(_as_json(response))
        return 0
    print(f"{response.total_size} cars match; {len(response.cars)} shown")
    if response.cars:
        print(f"  {'car':10} {'brand':12} {'model':16} {'year':>4} {'km':>8} {'price MXN':>12} {'region':11} color")
    for c in response.cars:
        price = _money(c.price) + ("*" if c.on_promotion else " ")
        print(f"  {c.car_id:10} {c.brand[:12]:12} {c.model[:16]:16} {c.year:>4} {c.kilometers:>8,} {price:>13} "
              f"{c.region[:11]:11} {c.color}")
    if response.next_page_token:
        print(f"next page: --page-token {response.next_page_token}")
    return 0


def cmd_facets(client: OfferClient, args) -> int:
    response = client.inventory_facets(" ".join(args.words), _filters(args))
    if args.json:
        print(_as_json(response))
        return 0
    p = response.prices
    listed = lambda counts: ", ".join(f"{c.value or '(none)'} {c.count:,}" for c in counts)  # noqa: E731
    print(f"{response.total_cars:,} cars, {response.promotion_count:,} on promotion")
    print(f"price MXN: {_money(p.min)} .. {_money(p.max)} (quartiles {_money(p.q1)}, {_money(p.median)}, "
          f"{_money(p.q3)})")
    print("brands: " + listed(response.brands))
    print("years: " + ", ".join(f"{y.year} {y.count:,}" for y in response.years))
    print("regions: " + listed(response.regions))
    print("colors: " + listed(response.colors))
    return 0


def cmd_customers(client: OfferClient, args) -> int:
    response = client.search_customers(id_prefix=args.prefix, text=args.text, region=args.region,
                                       risk_profile=args.risk, order_by=args.order_by, page_size=args.page_size,
                                       page_token=args.page_token)
    if args.json:
        print(_as_json(response))
        return 0
    print(f"  {'customer':10} {'risk':5} {'region':10} {'monthly MXN':>12} {'balance MXN':>12} {'car MXN':>12} "
          f"{'year':>4} {'km':>8}")
    for c in response.customers:
        print(f"  {c.customer_id:10} {c.risk_profile_name:5} {c.region[:10]:10} {_money(c.current_monthly_payment):>12} "
              f"{_money(c.outstanding_balance):>12} {_money(c.current_car_price):>12} {c.current_car_year:>4} "
              f"{c.current_car_km:>8,}")
    if response.next_page_token:
        print(f"next page: --page-token {response.next_page_token}")
    return 0


def cmd_amortization(client: OfferClient, args) -> int:
    response = client.amortization(args.car, args.term, **_customer(args), overrides=_overrides(args))
    if args.json:
        print(_as_json(response))
        return 0
    o = response.offer
    tier = TIER_TITLES.get(o.tier, "outside every tier")
    print(f"{o.car_id}, {o.term} months at {o.interest_rate:.2%}: {_money(o.monthly_payment)} MXN in month 1 "
          f"({o.payment_delta:+.2%}, {tier}); financed {_money(o.loan_amount)} MXN")
    print(f"  {'cuota':>5} {'saldo_insoluto':>15} {'capital':>11} {'interes':>10} {'cargos':>7} {'iva':>9} {'exigible':>10}")
    for r in response.rows:
        print(f"  {r.cuota:>5} {_money(r.saldo_insoluto):>15} {_money(r.capital):>11} {_money(r.interes):>10} "
              f"{_money(r.cargos):>7} {_money(r.iva):>9} {_money(r.exigible):>10}")
    return 0


HEALTH_SERVICES = ('"" (the whole server)', "tradeup.v1.OfferService", "tradeup.v1.SearchService",
                   "tradeup.v1.AdminService")


def cmd_health(client: OfferClient, args) -> int:
    try:
        if args.watch:
            for status in client.watch_health(args.service, seconds=args.watch_seconds):
                print(status, flush=True)
            return 0
        status = client.health(args.service)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        print(f"error: NOT_FOUND: the server reports no health for service {args.service!r} "
              f"(services: {', '.join(HEALTH_SERVICES)})", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_config(client: OfferClient, args) -> int:
    if args.sources:
        sources, version = client.config_sources()
        print(f"configuration version {version}")
        for key in sorted(sources):
            print(f"  {key:60} {sources[key]}")
        return 0
    print(json.dumps(client.get_config(), indent=1, sort_keys=True))
    return 0


def _leaves(changes: dict, prefix: str = "") -> Iterable[str]:
    """Dotted paths of the values a partial document sets."""
    for name, value in changes.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _at(document, path: str):
    for name in path.split("."):
        document = document.get(name) if isinstance(document, dict) else None
    return document


def cmd_set_params(client: OfferClient, args) -> int:
    changes = _json_object(args.changes, "set-params", 'a JSON object, e.g. \'{"fees": {"service_fee_pct": 0.035}}\'')
    business = client.update_business_parameters(changes, changed_by=args.by)
    if args.json:
        print(json.dumps(business, indent=1, sort_keys=True))
        return 0
    print("business parameters now in effect (`history` shows which of them changed):")
    for path in _leaves(changes):
        print(f"  {path} = {json.dumps(_at(business, path))}")
    return 0


def cmd_history(client: OfferClient, args) -> int:
    changes = client.config_history(args.prefix, args.limit).changes
    if args.json:
        print(json.dumps([json_format.MessageToDict(c, preserving_proto_field_name=True) for c in changes], indent=1))
        return 0
    print(f"{len(changes)} configuration changes, newest first")
    for c in changes:
        old, new = (json.dumps(json_format.MessageToDict(v)) for v in (c.old_value, c.new_value))
        when = c.changed_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"  v{c.version:<5} {when} UTC  {c.changed_by or '-'}  {c.key}: {old} -> {new}")
    return 0


def cmd_status(client: OfferClient, args) -> int:
    print(json_format.MessageToJson(client.status(), preserving_proto_field_name=True, indent=1,
                                    always_print_fields_with_no_presence=True))
    return 0


def cmd_invalidate(client: OfferClient, args) -> int:
    print(f"{client.invalidate_cache()} cache entries removed")
    return 0


WATCH_REASONS = {pb.WATCH_REASON_INITIAL: "initial", pb.WATCH_REASON_INVENTORY: "inventory",
                 pb.WATCH_REASON_CONFIGURATION: "configuration", pb.WATCH_REASON_CUSTOMER: "customer",
                 pb.WATCH_REASON_RESYNC: "resync", pb.WATCH_REASON_ENDING: "ending"}


def cmd_watch(client: OfferClient, args) -> int:
    """Live offers: the table, redrawn in place on a terminal; else one JSON line per message."""
    if args.customer is None and args.profile is None:
        print("watch: give a customer id or --profile", file=sys.stderr)
        return 2
    stream = client.watch_offers(**_customer(args), overrides=_overrides(args), tiers=args.tiers or (),
                                 max_offers=args.max_offers, same_region=args.same_region, filters=_filters(args))
    redraw = sys.stdout.isatty() and not args.json
    live = LiveOffers()
    try:
        for message in for_seconds(stream, args.seconds):
            live.apply(message)
            if not redraw:
                print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True)), flush=True)
                continue
            s = live.summary
            lines = [_summary_line(s),
                     f"{WATCH_REASONS.get(message.reason, '?')} at {datetime.now():%H:%M:%S}: "
                     f"+{len(message.added)} -{len(message.removed)} ~{len(message.changed)} offers; "
                     f"configuration v{s.config_version}, inventory v{s.inventory_version}. Ctrl-C to stop."]
            offers = live.offers()
            for tier, title in TIER_TITLES.items():
                shown = [o for o in offers if o.tier == tier][: args.per_tier]
                if shown:
                    lines += ["", f"{title}:", *_offer_table(shown)]
            print("\x1b[H\x1b[2J" + "\n".join(lines), flush=True)  # home, clear, draw
    except KeyboardInterrupt:
        stream.cancel()
    return 0


def _add_watch(add) -> None:
    p = add("watch", help="live offers: the table, updated as cars and parameters change")
    _add_customer(p)
    p.add_argument("--tiers", nargs="+", choices=sorted(TIERS), help="tiers wanted (default all)")
    p.add_argument("--max-offers", type=_whole(0), default=0, help="at most this many offers (0 = all)")
    p.add_argument("--same-region", action="store_true", help="only cars in the customer's region")
    _add_filters(p)
    p.add_argument("--per-tier", type=_whole(0), default=5, help="offers shown per tier in the table")
    p.add_argument("--seconds", type=_seconds, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON line per message (also when not on a terminal)")
    p.set_defaults(run=cmd_watch)


def _add_connection(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Options accepted before or after the subcommand; the subcommand's copies only set what is given."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)  # noqa: E731
    parser.add_argument("--target", default=default(os.environ.get("TRADEUP_TARGET", "localhost:50051")),
                        help="host:port (env TRADEUP_TARGET; default localhost:50051)")
    parser.add_argument("--timeout", type=_seconds, default=default(10.0), help="deadline per call, seconds")
    parser.add_argument("--tls", action="store_true", default=default(False),
                        help="use TLS (system roots unless --ca)")
    parser.add_argument("--ca", default=default(None), help="PEM file of the root certificate(s) to trust")
    parser.add_argument("--cert", default=default(None), help="PEM client certificate (mutual TLS)")
    parser.add_argument("--key", default=default(None), help="PEM client private key (mutual TLS)")
    parser.add_argument("--token", default=default(os.environ.get("TRADEUP_ADMIN_TOKEN")),
                        help="admin bearer token (env TRADEUP_ADMIN_TOKEN)")


def _add_customer(parser: argparse.ArgumentParser, overrides: bool = True) -> None:
    parser.add_argument("customer", nargs="?", help="customer id (or use --profile)")
    parser.add_argument("--profile", help="inline customer as a JSON object with the fields "
                        + ", ".join(PROFILE_FIELDS))
    if overrides:
        for name, flag, doc in OVERRIDE_FLAGS:
            parser.add_argument(flag, dest=name, type=float, help=f"override: {doc}")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    """The consideration filters: which cars are priced at all (before the prefilter limit)."""
    group = parser.add_argument_group("filters", "cars considered (the server checks the values)")
    for name, flag, kind, doc in FILTER_FLAGS:
        if kind is list:
            group.add_argument(flag, dest=name, action="append", metavar=name.upper()[:-1], help=doc)
        elif kind is bool:
            group.add_argument(flag, dest=name, action="store_true", help=doc)
        else:
            group.add_argument(flag, dest=name, type=kind, help=doc)


def _add_paging(parser: argparse.ArgumentParser, items: str, orders: str) -> None:
    parser.add_argument("--order-by", default="", help=orders)
    parser.add_argument("--page-size", type=_whole(0), default=20, help=f"{items} per page (at most 500)")
    parser.add_argument("--page-token", default="", help="next_page_token of the previous page (same query)")


def _login_name() -> str:
    """$LOGNAME or $USER, else the account's name (a root shell often sets neither)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # an account with no name
        return ""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tradeup", description="Client of the Trade-Up Engine gRPC service")
    _add_connection(parser, defaults=True)
    connection = argparse.ArgumentParser(add_help=False)
    _add_connection(connection, defaults=False)
    sub = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: sub.add_parser(name, parents=[connection], **kw)  # noqa: E731

    p = add("offers", help="offers for one customer, grouped by tier")
    _add_customer(p)
    p.add_argument("--terms", type=_whole(1), nargs="+", help="terms in months (default all)")
    p.add_argument("--tiers", nargs="+", choices=sorted(TIERS), help="tiers wanted (default all)")
    p.add_argument("--max-offers", type=_whole(0), default=0, help="at most this many offers (0 = all)")
    p.add_argument("--max-cars", type=_whole(0), default=0, help="prefilter limit (0 = server default)")
    p.add_argument("--same-region", action="store_true", help="only cars in the customer's region")
    _add_filters(p)
    p.add_argument("--per-tier", type=_whole(0), default=5, help="offers shown per tier in the table")
    p.add_argument("--json", action="store_true", help="the whole response as JSON")
    p.set_defaults(run=cmd_offers)

    p = add("bulk", help="offers for many customers over one stream")
    p.add_argument("customers", nargs="*", help="customer ids")
    p.add_argument("--file", help="file with one customer id per line")
    p.add_argument("--max-offers", type=_whole(0), default=0)
    p.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
    _add_filters(p)
    p.add_argument("--json", action="store_true", help="one JSON object per customer")
    p.set_defaults(run=cmd_bulk)

    p = add("subsidy", help="minimum-subsidy search over a customer's cars")
    _add_customer(p)
    p.add_argument("--cars", nargs="+", help="car ids (default: the prefiltered cars)")
    p.add_argument("--max-cars", type=_whole(0), default=0)
    p.add_argument("--same-region", action="store_true")
    _add_filters(p)
    p.add_argument("--max-viable", type=_whole(0), default=0, help="stop after this many viable cars (0 = all)")
    for name, flag, doc in GRID_FLAGS:
        p.add_argument(flag, dest=name, type=float, help=f"grid: {doc} (default: configured)")
    p.add_argument("--grid-kavak-total-enabled", choices=("on", "off"), help="grid: Kavak Total in the search")
    p.add_argument("--all", action="store_true", help="every car searched, in search order, instead of the ranking")
    p.add_argument("--limit", type=_whole(0), default=10, help="rows shown per table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_subsidy)

    for name, run, doc in (("search", cmd_search, "available cars matching words and filters, one page"),
                           ("facets", cmd_facets, "brands, years, prices, regions and colours of the matching cars")):
        p = add(name, help=doc)
        p.add_argument("words", nargs="*", help='words matching the car id, brand or model, e.g. "mazda 3"')
        _add_filters(p)
        if name == "search":
            _add_paging(p, "cars", '"price", "year" or "kilometers", optionally " desc" (default: car id)')
        p.add_argument("--json", action="store_true")
        p.set_defaults(run=run)

    p = add("customers", help="stored customers by id prefix, text, region and risk profile, one page")
    p.add_argument("prefix", nargs="?", default="", help="customer id prefix, e.g. C000")
    p.add_argument("--text", default="", help="text in the customer id or region")
    p.add_argument("--region", default="", help="this region only")
    p.add_argument("--risk", default="", help="this risk profile only, e.g. A1")
    _add_paging(p, "customers", '"customer_id" (default) or "customer_id desc"')
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_customers)

    p = add("amortization", help="month-by-month schedule of one offer")
    _add_customer(p)
    p.add_argument("--car", required=True, help="car id")
    p.add_argument("--term", type=_whole(1), required=True, help="months")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_amortization)

    p = add("health", help="grpc.health.v1 status (exit 0 when SERVING)")
    p.add_argument("--service", default="", help='"" (overall), tradeup.v1.OfferService, tradeup.v1.SearchService, tradeup.v1.AdminService')
    p.add_argument("--watch", action="store_true", help="stream status changes")
    p.add_argument("--watch-seconds", type=_seconds, default=None, help="stop watching after this long")
    p.set_defaults(run=cmd_health)

    p = add("config", help="effective configuration (admin)")
    p.add_argument("--sources", action="store_true", help="where each key's value comes from instead")
    p.set_defaults(run=cmd_config)
    for name, run, doc in (("status", cmd_status, "detailed status (admin)"),
                           ("invalidate", cmd_invalidate, "drop the inventory caches (admin)")):
        add(name, help=doc).set_defaults(run=run)
    p = add("set-params", help="change business parameters at runtime (admin)")
    p.add_argument("changes", help='partial params.json document, e.g. \'{"fees": {"service_fee_pct": 0.035}}\'')
    p.add_argument("--json", action="store_true", help="print every business parameter in effect")
    p.add_argument("--by", default=_login_name(), help="who makes the change, for the history "
                   "(default: your login name)")
    p.set_defaults(run=cmd_set_params)
    p = add("history", help="configuration changes, newest first: who, when, old, new (admin)")
    p.add_argument("--prefix", default="", help='only keys starting with this, e.g. "business.fees."')
    p.add_argument("--limit", type=_whole(0), default=20, help="changes shown (at most 1000)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_history)
    _add_watch(add)
    return parser


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes end with one line (and exit status 2), not the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _print_details(details: ErrorDetails) -> None:
    """Every wrong field when there are several (the message above names the first), what was
    not found, when to retry and the reason."""
    for field, description in details.violations if len(details.violations) > 1 else ():
        print(f"  {field}: {description}", file=sys.stderr)
    if details.resource:
        print(f"  not found: {details.resource[0]} {details.resource[1]!r}", file=sys.stderr)
    if details.retry_after is not None:
        print(f"  retry after {details.retry_after:g} s", file=sys.stderr)
    if details.reason:
        print(f"  reason: {details.reason} ({details.domain})", file=sys.stderr)


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "customer", None) is None and getattr(args, "profile", None) is None \
            and args.command in ("offers", "subsidy", "amortization"):
        print(f"{args.command}: give a customer id or --profile", file=sys.stderr)
        return 2
    read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
    client = OfferClient(args.target, timeout=args.timeout, admin_token=args.token, tls=args.tls,
                         root_certificates=read(args.ca), certificate_chain=read(args.cert), private_key=read(args.key))
    try:
        with client:
            return args.run(client, args)
    except grpc.RpcError as err:
        # The server ends every call with x-request-id in its trailers: without it, the call never reached it.
        if err.code() == grpc.StatusCode.UNAVAILABLE and "x-request-id" not in dict(err.trailing_metadata() or ()):
            print(f"cannot reach the server at {args.target} (is the server running? start it with make run)",
                  file=sys.stderr)
            return 1
        print(f"error: {err.code().name}: {err.details() or 'no details from the server'}", file=sys.stderr)
        _print_details(error_details(err))
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            print("admin commands need the server's admin token: --token or TRADEUP_ADMIN_TOKEN", file=sys.stderr)
        return 1
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a normal way to stop `health --watch` and the like
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
