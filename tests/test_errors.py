"""Every error carries google.rpc.Status details (grpc-status-details-bin): ErrorInfo with a stable
reason, BadRequest with every wrong field of the request, ResourceInfo, RetryInfo. Read from
Python (the client library) and by a Node client built from the .proto files alone."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2

import golden_data as golden
from client import ErrorDetails, error_details
from conftest import ROOT, start_server
from test_cli import run_client
from protos.tradeup.v1 import offers_pb2 as pb, search_pb2
from server import errors

STORED = golden.customer_ids()[0]
BURST = 3  # calls per caller before the rate limit answers
NODE_CLIENT = ROOT / "tests/node"
PROFILE = {"customer_id": "inline-1", "current_monthly_payment": 5398.16, "outstanding_balance": 59252.09,
           "current_car_price": 175999.0, "current_car_year": 2013, "current_car_km": 105000,
           "risk_profile_name": "A2", "risk_profile_index": 4}
# (method, request as proto JSON): the same calls from Python and from Node.
CALLS = {
    "profile": ("GenerateOffers", {"profile": {**PROFILE, "current_monthly_payment": 0, "current_car_price": 0,
                                               "current_car_year": 0}}),
    "request": ("GenerateOffers", {"profile": {**PROFILE, "risk_profile_index": 2000, "region": "r" * 65,
                                               "current_car_year": 0},
                                   "options": {"tiers": [7], "max_cars": 5000},
                                   "overrides": {"service_fee_pct": 2, "cxa_pct": -1}}),
    "customer": ("GenerateOffers", {"customer_id": "C99999"}),
    "car": ("GetAmortizationTable", {"customer_id": STORED, "car_id": "NO-SUCH-CAR", "term": 12}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server on the golden data (SQLite: the details do not depend on the database), each
    caller (x-caller-id) rate limited to BURST calls."""
    from conftest import database_environ, load_golden
    environ = database_environ("sqlite", None, tmp_path_factory.mktemp("errors"))
    load_golden(environ)
    running = start_server(environ, TRADEUP_RATE_LIMIT_PER_SECOND=0.001, TRADEUP_RATE_LIMIT_BURST=BURST,
                           TRADEUP_RATE_LIMIT_KEY="x-caller-id")
    yield running
    running.stop()


def call(server, name: str, caller: str | None = None) -> grpc.RpcError:
    method, request = CALLS[name]
    message = json_format.ParseDict(request, getattr(pb, f"{method}Request")())
    with pytest.raises(grpc.RpcError) as err:
        getattr(server.client.offers, method)(message, timeout=10,
                                              metadata=(("x-caller-id", caller or uuid.uuid4().hex),))
    return err.value


def test_every_wrong_field_of_an_inline_profile_in_one_error(server):
    err = call(server, "profile")
    details = error_details(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details.violations] == [
        "profile.current_monthly_payment", "profile.current_car_price", "profile.current_car_year"]
    field, description = details.violations[0]
    assert err.details() == f"{field}: {description}"  # the message names the first, as it always did
    assert (details.reason, details.domain, details.metadata) == ("INVALID_REQUEST", "tradeup.v1", ())


def test_every_wrong_field_of_the_request_in_one_error(server):
    err = call(server, "request")  # what reading the request finds wrong, then what the service does
    details = error_details(err)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in details.violations] == [
        "options.tiers", "profile.risk_profile_index", "profile.region", "overrides.service_fee_pct",
        "overrides.cxa_pct", "options.max_cars", "profile.current_car_year"]
    assert "got 7" in dict(details.violations)["options.tiers"]  # each field once, as first found
    assert err.details() == "options.tiers: " + details.violations[0][1]


def violations_of(call) -> list[str]:
    """The fields of the INVALID_ARGUMENT a call answers, its status message naming the first."""
    with pytest.raises(grpc.RpcError) as err:
        call(timeout=10, metadata=(("x-caller-id", uuid.uuid4().hex),))
    details = error_details(err.value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and details.reason == "INVALID_REQUEST"
    field, description = details.violations[0]
    assert err.value.details() == f"{field}: {description}"
    return [field for field, _ in details.violations]


def test_every_wrong_field_of_a_search_in_one_error(server):
    client = server.client  # what reading the request finds wrong, then what the service does
    assert violations_of(lambda **call: client.search_inventory(
        " ".join(["w"] * 11), filters={"price_min": 5e5, "price_max": 1e5, "max_price_vs_current": 1.5},
        order_by="colour", page_size=-1, page_token="not-a-token", **call)) == [
        "query", "filters.price_max", "filters.max_price_vs_current", "order_by", "page_size", "page_token"]
    assert violations_of(lambda **call: client.search_customers(
        id_prefix="C\u00e9", text="x" * 65, region="r" * 65, **call)) == ["id_prefix", "text", "region"]
    facets = search_pb2.InventoryFacetsRequest(query="x" * 65, filters={"year_min": 1900})
    assert violations_of(lambda **call: client.search.InventoryFacets(facets, **call)) == ["query", "filters.year_min"]


def test_every_wrong_field_of_a_subsidy_search_in_one_error(server):
    def search(**request):
        return lambda **call: list(server.client.find_minimum_subsidy(customer_id=STORED, **request, **call))
    # The grid is checked again without each field found wrong (cxa_min above cxa_max is one).
    grid = {"service_fee_max": 1.5, "cac_step": 0.0, "cxa_min": 0.035, "cxa_max": 0.02}
    assert sorted(violations_of(search(overrides={"service_fee_pct": 2}, car_ids=["NO-SUCH-CAR"] * 2001,
                                       grid=grid))) == sorted([
        "overrides.service_fee_pct", "car_ids", "grid.service_fee_max", "grid.cac_step", "grid.cxa_min"])
    # Fields right only together (a fee range below the configured minimum) are not blamed for another's error.
    assert violations_of(search(grid={"service_fee_max": 0.005, "service_fee_min": 0.001, "cac_step": 0.0})) == [
        "grid.cac_step"]
    # A grid right field by field but too large, with a wrong override.
    assert violations_of(search(overrides={"cxa_pct": -1}, grid={"cac_step": 10.0})) == ["overrides.cxa_pct", "grid"]


def test_not_found_names_the_resource(server):
    customer, car = error_details(call(server, "customer")), error_details(call(server, "car"))
    assert customer.reason == "CUSTOMER_NOT_FOUND" and customer.resource == ("tradeup.v1.Customer", "C99999")
    assert dict(customer.metadata) == {"field": "customer_id"} and not customer.violations
    assert car.reason == "CAR_NOT_FOUND" and car.resource == ("tradeup.v1.Car", "NO-SUCH-CAR")


def test_the_rate_limit_says_when_to_retry(server):
    caller = uuid.uuid4().hex
    for _ in range(BURST):
        assert call(server, "customer", caller).code() == grpc.StatusCode.NOT_FOUND
    err = call(server, "customer", caller)
    details = error_details(err)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and details.reason == "RATE_LIMITED"
    retry_ms = int(dict(err.trailing_metadata())["retry-after-ms"])  # the trailer stays, RetryInfo says the same
    assert details.retry_after == retry_ms / 1000 and 0 < retry_ms <= 1000 / 0.001
    assert f"retry in {retry_ms} ms" in err.details()


def test_the_status_in_the_trailer_is_the_calls_own(server):
    err = call(server, "customer")
    status = status_pb2.Status.FromString(dict(err.trailing_metadata())["grpc-status-details-bin"])
    assert (status.code, status.message) == (err.code().value[0], err.details())
    assert "x-request-id" in dict(err.trailing_metadata())  # the other trailers are kept


def test_the_cli_prints_every_violation(server):
    _, request = CALLS["profile"]
    result = run_client(server.target, "offers", "--profile", json.dumps(request["profile"]))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT: profile.current_monthly_payment: ")
    for field in ("current_monthly_payment", "current_car_price", "current_car_year"):
        assert any(line.startswith(f"  profile.{field}: must be") for line in lines[1:]), result.stderr
    assert "  reason: INVALID_REQUEST (tradeup.v1)" in lines


def node_details(result: dict) -> ErrorDetails:
    """A call's result as the Node client decoded it, in the library's terms."""
    details = result["status"]["details"]
    info = details["google.rpc.ErrorInfo"]
    resource = details.get("google.rpc.ResourceInfo")
    retry = details.get("google.rpc.RetryInfo")
    return ErrorDetails(
        reason=info["reason"], domain=info["domain"], metadata=tuple(sorted(info["metadata"].items())),
        violations=tuple((v["field"], v["description"])
                         for v in details.get("google.rpc.BadRequest", {}).get("field_violations", [])),
        resource=(resource["resource_type"], resource["resource_name"]) if resource else None,
        retry_after=(retry["retry_delay"]["seconds"] + retry["retry_delay"]["nanos"] / 1e9) if retry else None)


def test_a_node_client_decodes_the_same_details(server):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Node client test needs it (Debian package npm)")
    if not (NODE_CLIENT / "node_modules").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `make node-client` (make test does)")
    googleapis = Path(status_pb2.__file__).parents[2]  # the .proto files googleapis-common-protos ships
    limited = uuid.uuid4().hex
    calls = [{"method": method, "request": request, "metadata": {"x-caller-id": uuid.uuid4().hex}}
             for method, request in CALLS.values()]
    calls += [{"method": "GenerateOffers", "request": {"customer_id": "C99999"}, "metadata": {"x-caller-id": limited}}
              for _ in range(BURST + 1)]
    run = subprocess.run([node, str(NODE_CLIENT / "error_details.js"), server.target, str(ROOT / "protos"),
                          str(googleapis), json.dumps(calls)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    for name, result in zip(CALLS, results):
        err = call(server, name)
        assert (result["code"], result["message"]) == (err.code().value[0], err.details()), name
        assert (result["status"]["code"], result["status"]["message"]) == (result["code"], result["message"])
        assert node_details(result) == error_details(err), name
    limited_result = results[-1]
    details = node_details(limited_result)
    assert limited_result["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and details.reason == "RATE_LIMITED"
    assert details.retry_after == limited_result["retry_after_ms"] / 1000 > 0


def errors_raised() -> list[tuple[str, str, set[str], bool]]:
    """(where, error class, the reasons it can give, whether the call names them) of every server
    error built in server/ (a Violations collector builds one too)."""
    built = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            given = next((k.value for k in node.keywords if k.arg == "reason"), None)
            if node.func.id == "Violations" and len(node.args) == 2:
                name, given = node.args[0].id, node.args[1]
            elif node.func.id == "Violations":
                name = node.args[0].id if node.args else "InvalidArgument"
            else:
                name = node.func.id
            cls = getattr(errors, name, None)
            passed_on = isinstance(given, ast.Attribute) and given.attr == "reason"  # another error's
            if isinstance(cls, type) and issubclass(cls, errors.ServiceError) and not passed_on:
                reasons = {n.value for n in ast.walk(given) if isinstance(n, ast.Constant)} if given else {cls.reason}
                built.append((f"{path.relative_to(ROOT)}:{node.lineno}", name, reasons, given is not None))
    return built


def test_every_reason_is_named_and_documented():
    built = errors_raised()
    for where, name, reasons, named in built:
        assert named or "reason" in vars(getattr(errors, name)), f"{where}: {name} needs a reason of its own"
        assert reasons and all(re.fullmatch(r"[A-Z][A-Z0-9_]+[A-Z0-9]", r) for r in reasons), (where, reasons)
    every = set().union(*(reasons for *_, reasons, _ in built))
    assert {"CUSTOMER_NOT_FOUND", "CAR_NOT_FOUND", "RATE_LIMITED", "DATABASE_UNAVAILABLE", "STARTING",
            "SHUTTING_DOWN", "INVALID_REQUEST", "INTERNAL"} <= every
    for document in ("protos/tradeup/v1/offers.proto", "README.md"):
        words = set(re.findall(r"[A-Z][A-Z0-9_]+", (ROOT / document).read_text()))
        assert every <= words, f"reasons missing from {document}: {sorted(every - words)}"
