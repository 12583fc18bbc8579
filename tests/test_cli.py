"""The CLI, run as a subprocess against a real server, as a user runs it."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import golden_data as golden
from conftest import free_port, start_server
from server.__main__ import banner

ROOT = Path(__file__).resolve().parents[1]


def run_cli(server, *args, token=True):
    return run_client(server.target, *args, token=token)


def run_client(target, *args, token=True):
    env = {**os.environ, "TRADEUP_TARGET": target}
    env.pop("TRADEUP_ADMIN_TOKEN", None)
    if token:
        env["TRADEUP_ADMIN_TOKEN"] = "test-admin-token"
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_offers_table_and_json(server):
    customer = golden.customer_with_offers(3)
    record = golden.offers_of(customer)
    table = run_cli(server, "offers", customer, "--per-tier", "2")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith(f"Customer {customer}: {len(record['cars'])} cars evaluated, "
                                   f"{len(record['offers'])} offers")
    for tier in ("Refresh", "Upgrade", "Max Upgrade"):
        count = sum(o["tier"] == tier for o in record["offers"])
        heading = f"{tier}: {count} offers" + (", best 2 shown" if count > 2 else "")
        assert heading in table.stdout.splitlines(), heading
    data = json.loads(run_cli(server, "offers", customer, "--json", "--max-offers", "3").stdout)
    assert data["summary"]["total_offers"] == len(record["offers"])
    assert sum(len(g.get("offers", [])) for g in data["groups"]) == 3


def test_bulk_subsidy_amortization_health(server):
    customer = golden.customer_ids()[0]
    bulk = run_cli(server, "bulk", customer, "NOPE", "--progress")
    assert bulk.returncode == 1  # one customer failed
    assert f"{customer}: {len(golden.offers_of(customer)['offers'])} offers" in bulk.stdout
    assert "NOPE: NOT_FOUND" in bulk.stdout and "2/2 customers, 1 errors" in bulk.stderr
    lines = [json.loads(line) for line in run_cli(server, "bulk", customer, "NOPE", "--json").stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]  # index 0 as well: every line has the same keys
    pair = golden.stored_subsidies()[0]
    car, result = pair["car"]["car_id"], pair["result"]
    outcome = "VIABLE" if result["viable"] else result["failure_reason"].upper()
    subsidy = run_cli(server, "subsidy", pair["customer"]["customer_id"], "--cars", car, "--all")
    assert subsidy.returncode == 0, subsidy.stderr
    (row,) = [line.split() for line in subsidy.stdout.splitlines() if line.split()[:1] == [car]]
    assert (row[1], row[-1]) == (outcome, str(result["iterations_tried"]))
    priced = golden.customer_with_offers()
    offer = golden.offers_of(priced)["offers"][0]
    schedule = run_cli(server, "amortization", priced, "--car", offer["car_id"], "--term", str(offer["term"]))
    assert schedule.returncode == 0 and f"{offer['monthly_payment']:,.2f} MXN in month 1" in schedule.stdout
    assert len([line for line in schedule.stdout.splitlines() if line.strip()[:2].strip().isdigit()]) == \
        offer["term"]
    health = run_cli(server, "health")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_admin_commands_and_errors(server):
    status = json.loads(run_cli(server, "status").stdout)
    assert status["database_reachable"] is True and status["circuit_state"] == "closed"
    config = json.loads(run_cli(server, "config").stdout)
    assert config["server"]["admin_token"] == "***"
    denied = run_cli(server, "config", token=False)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    bad = run_cli(server, "offers", golden.customer_ids()[0], "--rate", "250")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: overrides.interest_rate" in bad.stderr


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_bad_numbers_are_usage_errors(server):
    customer = golden.customer_ids()[0]
    car = golden.offers_of(customer)["cars"][0]
    for args in (("offers", customer, "--max-offers", "-1"), ("offers", customer, "--per-tier", "x"),
                 ("amortization", customer, "--car", car, "--term", "0")):
        result = run_cli(server, *args)
        assert result.returncode == 2 and "must be" in result.stderr, result.stderr
        assert_no_traceback(result)


def test_profile_fields_are_checked_and_listed(server):
    profile = {"current_monthly_payment": 6000, "outstanding_balance": 20000, "current_car_price": 250000,
               "current_car_year": 2018, "current_car_km": 60000, "risk_profile_name": "A1"}
    good = run_cli(server, "offers", "--profile", json.dumps(profile), "--max-offers", "1", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["summary"]["cars_evaluated"] > 0
    unknown = run_cli(server, "offers", "--profile", json.dumps({**profile, "colour": "red"}))
    assert unknown.returncode == 2 and "unknown field 'colour'" in unknown.stderr
    assert "current_monthly_payment" in unknown.stderr and "risk_profile_name" in unknown.stderr
    wrong_type = run_cli(server, "offers", "--profile", json.dumps({**profile, "current_car_year": "old"}))
    assert wrong_type.returncode == 2 and "current_car_year" in wrong_type.stderr
    not_json = run_cli(server, "offers", "--profile", "{current_monthly_payment: 1}")
    assert not_json.returncode == 2 and "--profile: invalid JSON" in not_json.stderr
    for result in (unknown, wrong_type, not_json):
        assert_no_traceback(result)
    help_text = run_cli(server, "offers", "--help").stdout
    assert all(name in help_text for name in profile)


def test_unknown_health_service_is_explained(server):
    result = run_cli(server, "health", "--service", "bogus")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "'bogus'" in result.stderr and "tradeup.v1.OfferService" in result.stderr


def test_unknown_car_in_amortization_names_car_id(server):
    result = run_cli(server, "amortization", golden.customer_ids()[0], "--car", "NOPE", "--term", "48")
    assert result.returncode == 1
    assert "NOT_FOUND: car_id: no available car 'NOPE'" in result.stderr and "car_ids" not in result.stderr


def test_bulk_file_skips_comments_and_the_progress_line_is_cleared(server, tmp_path):
    customer = golden.customer_ids()[0]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# customers to price\n{customer}  # the first\n\n   \nNOPE\n")
    env = {**os.environ, "TRADEUP_TARGET": server.target}
    merged = subprocess.run([sys.executable, "-m", "client", "bulk", "--file", str(ids), "--progress",
                             "--max-offers", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=60)
    assert merged.returncode == 1  # NOPE failed
    segments = re.split(r"[\r\n]", merged.stdout)
    offers = len(golden.offers_of(customer)["offers"])
    assert any(s.startswith(f"{customer}: {offers} offers") for s in segments), merged.stdout
    assert any(s.startswith("NOPE: NOT_FOUND") for s in segments), merged.stdout
    assert "2/2 customers, 1 errors" in merged.stdout and "customers to" not in merged.stdout
    # Each result starts on a clean line: the progress line is wiped (spaces) before it is printed.
    for line in merged.stdout.split("\n"):
        if "offers (" in line or "NOT_FOUND" in line:
            assert line.rsplit("\r", 1)[-1].startswith((f"{customer}:", "NOPE:")), repr(line)
            assert "errors" not in line.rsplit("\r", 1)[-1]


def test_connection_options_after_the_subcommand(server):
    result = run_cli(server, "status", "--token", "test-admin-token", token=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["database_reachable"] is True
    result = run_cli(server, "health", "--target", server.target, "--timeout", "5")
    assert result.returncode == 0 and result.stdout.strip() == "SERVING"
    missing = run_cli(server, "status", token=False)
    assert missing.returncode == 1 and "--token or TRADEUP_ADMIN_TOKEN" in missing.stderr


def test_config_prints_whole_numbers_as_integers(server):
    result = run_cli(server, "config")
    assert result.returncode == 0, result.stderr
    assert '"max_workers": 8,' in result.stdout and '"port": 0,' in result.stdout
    assert not re.search(r'"(port|max_workers|metrics_port|pool_max_connections)": \d+\.0\b', result.stdout)


def test_set_params_prints_the_values_now_in_effect(server):
    result = run_cli(server, "set-params", '{"fees": {"service_fee_pct": 0.035, "cac_bonus": 500}}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["business parameters now in effect (`history` shows which of them changed):",
                                          "  fees.service_fee_pct = 0.035",
                                          "  fees.cac_bonus = 500.0"]
    everything = json.loads(run_cli(server, "set-params", '{"iva_rate": 0.16}', "--json").stdout)
    assert everything["fees"]["service_fee_pct"] == 0.035 and everything["iva_rate"] == 0.16
    bad = run_cli(server, "set-params", "[1, 2]")
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    assert_no_traceback(bad)


def test_more_terms_than_the_kernel_prices_are_refused(server):
    terms = list(range(1, 66))
    changes = {"terms": terms, "down_payment_table": {"columns_terms": terms,
                                                      "rows_by_risk_profile_index": [[0.2] * 65] * 26}}
    result = run_cli(server, "set-params", json.dumps(changes))
    assert result.returncode == 1
    assert "INVALID_ARGUMENT: changes.terms: must list at most 64 terms, got 65" in result.stderr
    # nothing half-applied
    assert run_cli(server, "offers", golden.customer_ids()[0], "--max-offers", "1").returncode == 0


def test_admin_disabled_says_how_to_enable_it(golden_database, tmp_path):
    running = start_server(golden_database[1], TRADEUP_ADMIN_TOKEN="")
    try:
        for token in (True, False):
            result = run_cli(running, "status", token=token)
            assert result.returncode == 1
            assert "FAILED_PRECONDITION: admin is disabled" in result.stderr and "TRADEUP_ADMIN_TOKEN" in result.stderr
            assert "not valid" not in result.stderr
    finally:
        running.stop()


def test_set_params_then_history(server):
    changed = run_cli(server, "set-params", '{"fees": {"cac_bonus": 250}}', "--by", "ana", "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["fees"]["cac_bonus"] == 250
    history = run_cli(server, "history", "--prefix", "business.fees.")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0] == "1 configuration changes, newest first"
    assert " UTC  ana  business.fees.cac_bonus: 0.0 -> 250.0" in lines[1]
    assert json.loads(run_cli(server, "history", "--json").stdout)[0]["changed_by"] == "ana"
    sources = run_cli(server, "config", "--sources").stdout.splitlines()
    assert sources[0].startswith("configuration version ")
    assert [line.split() for line in sources if "fees.cac_bonus" in line or "server.port " in line] == [
        ["business.fees.cac_bonus", "database"], ["server.port", "environment"]]


def test_command_line_mistakes_end_in_one_line(server):
    result = run_cli(server, "offers", "X", "--bogus")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["tradeup: error: unrecognized arguments: --bogus (see tradeup --help)"]


@pytest.mark.parametrize("args", [("--timeout", "-1", "health"), ("--timeout", "0", "health"),
                                  ("health", "--timeout", "nan"), ("health", "--timeout", "inf"),
                                  ("health", "--watch", "--watch-seconds", "-1"), ("watch", "C1", "--seconds", "0")])
def test_durations_must_be_positive_and_finite(args):
    result = run_client(f"127.0.0.1:{free_port()}", *args)  # refused before any connection is tried
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert re.match(r"tradeup( \w+)?: error: argument --[a-z-]+: must be a number of seconds above 0", line), line


def test_no_server_listening_is_one_line(tmp_path):
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    for args in (("health",), ("offers", "C00001")):
        result = run_client(target, *args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"cannot reach the server at {target} (is the server running? start it with make run)"]
    # UNAVAILABLE from a server that answers (its database cannot be opened: a directory) keeps its reason.
    running = start_server({"TRADEUP_SQLITE_PATH": str(tmp_path)})
    try:
        result = run_cli(running, "offers", "C00001")
        assert result.returncode == 1 and result.stderr.startswith("error: UNAVAILABLE: the server is starting"), \
                result.stderr
    finally:
        running.stop()


def test_banner_names_the_address_bound():
    assert banner("[::]", 50051, 1).startswith("Trade-Up Engine listening on localhost:50051 (1 process)")
    assert banner("0.0.0.0", 50051, 2).startswith("Trade-Up Engine listening on localhost:50051 (2 processes)")
    assert "on 127.0.0.1:7 " in banner("127.0.0.1", 7, 1) and "--target 127.0.0.1:7 " in banner("127.0.0.1", 7, 1)
    assert "on [::1]:7 " in banner("::1", 7, 1) and "--target [::1]:7 " in banner("::1", 7, 1)


@pytest.fixture(scope="module")
def started_as_make_run(tmp_path_factory):
    """`python -m server` from the checkout, as `make run` starts it (demo data seeded into an empty
    SQLite file), on a loopback port; (the lines of its banner, the port)."""
    workdir = tmp_path_factory.mktemp("make-run")
    port = free_port()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "TRADEUP_HOST": "127.0.0.1", "TRADEUP_PORT": str(port),
           "TRADEUP_SQLITE_PATH": str(workdir / "tradeup.db")}
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=log)
    try:
        # The banner is one write, well under a pipe's atomic size: one read takes it whole.
        ready, _, _ = select.select([process.stdout], [], [], 60)
        assert ready, "no banner within 60 s"
        lines = os.read(process.stdout.fileno(), 65536).decode().splitlines()
        yield lines, port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        assert code == 0, (workdir / "server.log").read_text()[-3000:]


def banner_command(lines, program):
    """The banner's command line whose program ends with `program`."""
    (line,) = [line.strip() for line in lines[1:] if line.strip().split()[0].endswith(program)]
    return line


def run_as_printed(line):
    return subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_banner_client_command_works_as_printed(started_as_make_run):
    lines, port = started_as_make_run
    assert lines[0].startswith(f"Trade-Up Engine listening on 127.0.0.1:{port} (1 process)")
    result = run_as_printed(banner_command(lines, "python"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Customer C00001: ")


def test_banner_grpcurl_command_works_as_printed(started_as_make_run):
    if not (ROOT / "bin" / "grpcurl").exists():
        pytest.skip("bin/grpcurl is absent (make tools builds it): the banner prints no grpcurl line")
    lines, port = started_as_make_run
    result = run_as_printed(banner_command(lines, "grpcurl"))
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["summary"]["customer_id"] == "C00001" and response["groups"]


def test_health_watch_ends_after_the_given_seconds_without_an_error(started_as_make_run):
    started = time.monotonic()
    result = run_client(f"127.0.0.1:{started_as_make_run[1]}", "health", "--watch", "--watch-seconds", "2")
    assert result.returncode == 0, result.stderr  # cancelled by the client: no DEADLINE_EXCEEDED
    assert result.stdout.splitlines() == ["SERVING"] and result.stderr == ""
    assert 2 <= time.monotonic() - started < 15


def test_every_filter_has_a_flag_and_the_flags_filter_as_the_library_does(server):
    from client.cli import FILTER_FLAGS, _filters, build_parser
    from protos.tradeup.v1 import offers_pb2 as pb
    assert {name for name, *_ in FILTER_FLAGS} == set(pb.ConsiderationFilters.DESCRIPTOR.fields_by_name)
    every = [arg for name, flag, kind, _ in FILTER_FLAGS
             for arg in ((flag,) if kind is bool else (flag, "1", flag, "2") if kind is list else (flag, "3"))]
    parsed = _filters(build_parser().parse_args(["offers", "C1", *every]))
    assert parsed.keys() == {name for name, *_ in FILTER_FLAGS} and parsed["brands"] == ["1", "2"]
    zeros = [arg for name, flag, kind, _ in FILTER_FLAGS if kind in (int, float) for arg in (flag, "0")]
    assert _filters(build_parser().parse_args(["offers", "C1", *zeros])) == {  # 0 is a filter, not "no filter"
        name: 0 for name, flag, kind, _ in FILTER_FLAGS if kind in (int, float)}
    assert _filters(build_parser().parse_args(["offers", "C1"])) == {}
    from client.library import offer_request
    assert not offer_request(pb.GenerateOffersRequest, "C1").HasField("filters")  # none: the server skips them
    assert offer_request(pb.GenerateOffersRequest, "C1", filters={"km_max": 0}).filters.HasField("km_max")
    customer = golden.customer_with_offers(20)
    car = golden.inventory()[golden.offers_of(customer)["cars"][0]]
    brand, year = car["model"].split(" ")[0], car["year"]
    shown = run_cli(server, "offers", customer, "--brand", brand.upper(), "--brand", "Tesla", "--year-min", str(year),
                    "--price-max", "2000000", "--json")
    assert shown.returncode == 0, shown.stderr
    expected = server.client.generate_offers(customer_id=customer, filters={
        "brands": [brand], "year_min": year, "price_max": 2e6})
    data = json.loads(shown.stdout)
    assert 0 < data["summary"]["cars_evaluated"] == expected.summary.cars_evaluated < len(golden.offers_of(customer)["cars"])
    assert [o["car_id"] for g in data["groups"] for o in g.get("offers", [])] == \
        [o.car_id for g in expected.groups for o in g.offers]
    refused = run_cli(server, "offers", customer, "--year-min", "2022", "--year-max", "2020")
    assert refused.returncode == 1 and refused.stderr.startswith("error: INVALID_ARGUMENT: filters.year_max: ")
    assert run_cli(server, "bulk", customer, "--km-max", "lots").returncode == 2
    refused = run_cli(server, "offers", customer, "--max-price-vs-current", "0")  # reaches the server's check
    assert refused.returncode == 1 and "filters.max_price_vs_current" in refused.stderr
