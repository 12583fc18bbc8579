"""Search: the per-request subsidy grid and max_viable, SearchInventory, InventoryFacets and
SearchCustomers against a real server, each checked against an oracle computed here from the
data the database was filled with (golden data on SQLite and MariaDB; demo data on SQLite for
regions, colours and promotions)."""
from __future__ import annotations

import base64
import statistics
from dataclasses import replace

import grpc
import pytest

import golden_data as golden
from engine_ext import Engine, load_kernel
from protos.tradeup.v1 import search_pb2

GRID = {"service_fee_min": 0.03, "cac_max": 2000.0, "cac_step": 1000.0, "cxa_max": 0.03, "kavak_total_enabled": False}


def subsidy(client, **request) -> tuple[list, object]:
    """(every result in stream order, the last message)."""
    messages = list(client.find_minimum_subsidy(**request))
    return [r for m in messages for r in m.results], messages[-1]


def fields(result) -> tuple:
    return (result.car_id, result.viable, result.term, result.service_fee_pct, result.cac_bonus, result.cxa_pct,
            result.monthly_payment, result.payment_delta, result.npv, result.loan_amount, result.iterations_tried)


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# --- FindMinimumSubsidy: grid and max_viable ------------------------------------------------------
def test_a_request_grid_replaces_the_configured_one(server):
    customer = golden.customer_with_offers()
    results, last = subsidy(server.client, customer_id=customer, max_cars=40, grid=GRID)
    configured, _ = subsidy(server.client, customer_id=customer, max_cars=40)
    assert [r.car_id for r in results] == [r.car_id for r in configured]
    # The oracle: the engine with the configured grid replaced, over the same cars.
    params = golden.params()
    params = replace(params, subsidy=replace(params.subsidy, **GRID))
    inventory = golden.inventory()
    engine = Engine(load_kernel("compiled"), workers=1)
    try:
        expected = engine.minimum_subsidy(golden.terms_of(golden.customers()[customer]), [r.car_id for r in results],
                                          [inventory[r.car_id]["car_price"] for r in results], params)
    finally:
        engine.close()
    assert [fields(r) for r in results] == [
        (e.car_id, e.viable, e.term, e.service_fee_pct, e.cac_bonus, e.cxa_pct, e.monthly_payment, e.payment_delta,
         e.npv, e.loan_amount, e.iterations_tried) for e in expected]
    assert all(r.cac_bonus <= 2000 and r.cxa_pct <= 0.03 for r in results)
    assert [fields(r) for r in results] != [fields(r) for r in configured]
    s = last.summary
    assert (s.candidates, s.searched, s.viable) == (len(results), len(results), sum(r.viable for r in results))
    assert s.iterations == sum(r.iterations_tried for r in results)
    assert (last.viable_count, last.cars_searched) == (s.viable, s.searched)
    for grid, field in (
            ({"cac_step": 0.0}, "grid.cac_step"), ({"service_fee_step": -0.01}, "grid.service_fee_step"),
            ({"service_fee_max": 1.5}, "grid.service_fee_max"), ({"cxa_min": -0.01}, "grid.cxa_min"),
            ({"cxa_min": 0.035, "cxa_max": 0.02}, "grid.cxa_min"), ({"cac_min": 5e3, "cac_max": 1e3}, "grid.cac_min"),
            ({"kavak_total_amount": float("nan")}, "grid.kavak_total_amount"),
            ({"cac_step": 10.0}, "grid")):  # 4 terms x 7 x 1,001 x 7 combinations per car
        err = rpc_error(lambda: subsidy(server.client, customer_id=customer, max_cars=5, grid=grid))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(f"{field}: "), grid


def test_max_viable_stops_after_that_many_viable_cars_and_ranks_them(server):
    for customer in golden.customer_ids():
        full, last = subsidy(server.client, customer_id=customer, max_cars=300)
        if last.summary.viable >= 4:
            break
    else:
        pytest.fail("no golden customer with 4 viable cars")
    third = [k for k, r in enumerate(full) if r.viable][2]
    results, last = subsidy(server.client, customer_id=customer, max_cars=300, max_viable=3)
    assert [fields(r) for r in results] == [fields(r) for r in full[:third + 1]]
    s = last.summary
    assert (s.candidates, s.searched, s.viable) == (len(full), third + 1, 3)
    assert s.iterations == sum(r.iterations_tried for r in results)
    viable = sorted((r for r in results if r.viable), key=lambda r: (-r.npv, r.car_id))
    assert [fields(r) for r in s.best_viable] == [fields(r) for r in viable]
    misses = sorted((r for r in results if not r.viable and r.term), key=lambda r: (abs(r.payment_delta), r.car_id))
    assert [fields(r) for r in s.nearest_misses] == [fields(r) for r in misses[:5]]
    # Without max_viable every car is searched and every viable car ranked.
    assert len(last.summary.best_viable) == 3 and subsidy(server.client, customer_id=customer, max_cars=300)[1] \
        .summary.searched == len(full)


# --- SearchInventory ----------------------------------------------------------------------------
def cars_matching(words: str = "", brand: str | None = None, year_min: int | None = None) -> list:
    """The golden cars a search should find: each word starts the id or is in the brand or model."""
    def match(car) -> bool:
        return all(car.car_id.lower().startswith(w) or w in car.brand.lower() or w in car.model.lower()
                   for w in words.lower().split())
    return [c for c in golden.cars() if match(c) and (brand is None or c.brand.lower() == brand.lower())
            and (year_min is None or c.year >= year_min)]


def all_pages(client, **request) -> tuple[list, list]:
    cars, sizes, token = [], [], ""
    while True:
        page = client.search_inventory(page_token=token, **request)
        cars += page.cars
        sizes.append(page.total_size)
        token = page.next_page_token
        if not token:
            return cars, sizes


def test_search_inventory_pages_through_the_snapshot_in_order(server):
    expected = cars_matching("o", year_min=2022)
    assert 20 < len(expected) < 1000
    for order_by, key in (("", lambda c: c.car_id), ("price desc", lambda c: (-c.price, c.car_id)),
                          ("kilometers", lambda c: (c.kilometers, c.car_id)), ("year desc", lambda c: (-c.year, c.car_id))):
        cars, sizes = all_pages(server.client, query="o", filters={"year_min": 2022}, order_by=order_by, page_size=17)
        assert [c.car_id for c in cars] == [c.car_id for c in sorted(expected, key=key)], order_by
        assert set(sizes) == {len(expected)}
    found = server.client.search_inventory("audi a4", page_size=500)
    assert sorted(c.car_id for c in found.cars) == sorted(c.car_id for c in cars_matching("audi a4"))
    car = found.cars[0]
    stored = golden.inventory()[car.car_id]
    assert (car.price, car.year, car.kilometers, car.on_promotion) == (stored["car_price"], stored["year"],
                                                                      stored["kilometers"], False)
    prefix = server.client.search_inventory("inv0001", page_size=500)
    assert sorted(c.car_id for c in prefix.cars) == [f"INV0001{k}" for k in range(10)]
    assert len(server.client.search_inventory(page_size=10**6).cars) == 500  # lowered to the maximum


def test_search_inventory_refuses_what_it_cannot_answer(server):
    first = server.client.search_inventory("toyota", page_size=3)
    assert first.next_page_token
    cases = [
        (dict(query="honda", page_token=first.next_page_token), "page_token"),   # another query's token
        (dict(query="toyota", order_by="price", page_token=first.next_page_token), "page_token"),
        (dict(query="toyota", page_token=first.next_page_token[:-2] + "xx"), "page_token"),
        (dict(page_token=base64.urlsafe_b64encode(b'["0123456789abcdef", 1, 2]').decode()), "page_token"),
        (dict(page_size=-1), "page_size"), (dict(order_by="colour"), "order_by"), (dict(order_by="car_id desc"), "order_by"),
        (dict(filters={"same_brand_as_current": True}), "filters.same_brand_as_current"),
        (dict(filters={"max_price_vs_current": 1.5}), "filters.max_price_vs_current"),
        (dict(filters={"max_km_vs_current": 0.0}), "filters.max_km_vs_current"),
        (dict(filters={"year_min": 2020, "year_max": 2019}), "filters.year_max"),
        (dict(query=" ".join(["w"] * 11)), "query"),
    ]
    for request, field in cases:
        err = rpc_error(lambda: server.client.search_inventory(**request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(f"{field}: "), request
    # The same query's token with another page size goes on where the page ended.
    second = server.client.search_inventory("toyota", page_size=5, page_token=first.next_page_token)
    assert [c.car_id for c in second.cars] == [c.car_id for c in server.client.search_inventory(
        "toyota", page_size=8).cars[3:]]


# --- InventoryFacets (demo data: regions, colours, promotions) -----------------------------------
@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from conftest import start_server
    running = start_server({"TRADEUP_SQLITE_PATH": str(tmp_path_factory.mktemp("demo") / "demo.db")},
                           TRADEUP_SEED_DEMO_DATA="true")
    yield running
    running.stop()


def test_facets_count_what_the_panel_shows(demo_server):
    from server.data.demo import demo_cars
    cars = [c for c in demo_cars() if c.available]
    for filters, chosen in (({}, cars),
                            ({"regions": ["cdmx"], "price_max": 400000}, [c for c in cars if c.region == "CDMX"
                                                                          and c.price <= 400000]),
                            ({"brands": ["Mazda"], "promotion_only": True}, [c for c in cars if c.brand == "Mazda"
                                                                             and c.has_promotion])):
        facets = demo_server.client.inventory_facets(filters=filters)
        assert facets.total_cars == len(chosen) > 0
        for name, got in (("brand", facets.brands), ("region", facets.regions), ("color", facets.colors)):
            counts = {}
            for car in chosen:
                counts[getattr(car, name)] = counts.get(getattr(car, name), 0) + 1
            assert [(f.value, f.count) for f in got] == sorted(counts.items(), key=lambda i: (-i[1], i[0]))
        years = sorted({c.year for c in chosen}, reverse=True)
        assert [(y.year, y.count) for y in facets.years] == [(y, sum(c.year == y for c in chosen)) for y in years]
        prices = sorted(c.price for c in chosen)
        quartiles = statistics.quantiles(prices, n=4, method="inclusive") if len(prices) > 1 else prices * 3
        assert [facets.prices.min, facets.prices.q1, facets.prices.median, facets.prices.q3, facets.prices.max] == \
            pytest.approx([prices[0], *quartiles, prices[-1]], rel=1e-12)
        assert facets.promotion_count == sum(c.has_promotion for c in chosen)
    # The words of a search narrow the facets as they narrow the search.
    facets = demo_server.client.inventory_facets("mazda 3")
    page = demo_server.client.search_inventory("mazda 3", page_size=500)
    assert facets.total_cars == page.total_size == len(page.cars) > 0
    assert {c.model for c in page.cars} <= {"Mazda 3", "CX-3"}
    assert demo_server.client.inventory_facets(filters={"brands": ["nothing"]}).total_cars == 0


# --- SearchCustomers ------------------------------------------------------------------------------
def customer_pages(client, **request) -> list[str]:
    ids, token = [], ""
    while True:
        page = client.search_customers(page_token=token, **request)
        ids += [c.customer_id for c in page.customers]
        assert len(page.customers) <= request.get("page_size", 50)
        token = page.next_page_token
        if not token:
            return ids


def test_search_customers_pages_on_indexed_columns(server):
    customers = golden.customers()
    a1 = sorted(i for i, c in customers.items() if c["risk_profile_name"] == "A1" and i.startswith("C01"))
    assert len(a1) > 8
    assert customer_pages(server.client, id_prefix="C01", risk_profile="A1", page_size=4) == a1
    assert customer_pages(server.client, id_prefix="C01", risk_profile="A1", order_by="customer_id desc",
                          page_size=3) == a1[::-1]
    assert customer_pages(server.client, text="019", page_size=7) == sorted(i for i in customers if "019" in i)
    # `%` and `_` are themselves, not wildcards.
    assert customer_pages(server.client, text="%") == [] and customer_pages(server.client, text="C0_") == []
    assert customer_pages(server.client, region="CDMX") == []
    record = server.client.search_customers(id_prefix=a1[0], page_size=1).customers[0]
    assert (record.customer_id, record.risk_profile_name, record.current_monthly_payment) == (
        a1[0], "A1", customers[a1[0]]["current_monthly_payment"])
    from server.services.search import CustomerQuery, make_token
    first = server.client.search_customers(id_prefix="C01", page_size=2)
    forged = make_token(CustomerQuery(id_prefix="C01"), ["C\u00e9"])  # right query, not an id: never reaches SQL
    for request, field in ((dict(id_prefix="C02", page_token=first.next_page_token), "page_token"),
                           (dict(id_prefix="C01", page_token=forged), "page_token"),
                           (dict(id_prefix="C\u00e9"), "id_prefix"), (dict(order_by="region"), "order_by"),
                           (dict(text="x" * 65), "text"), (dict(page_size=-5), "page_size")):
        err = rpc_error(lambda: server.client.search_customers(**request))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(f"{field}: "), request
    assert server.client.search_customers(text="\u00e9\u00e8").customers == []  # not ASCII: only regions can hold it
    # The service's calls pass the interceptors as every call does: the request id comes back.
    _, call = server.client.search.SearchCustomers.with_call(search_pb2.SearchCustomersRequest(page_size=1), timeout=5)
    assert dict(call.trailing_metadata())["x-request-id"]


def test_search_customers_by_region_and_risk(demo_server):
    from server.data.demo import demo_customers
    expected = sorted(c.customer_id for c in demo_customers() if c.region == "Puebla" and c.risk_profile_name == "B")
    assert customer_pages(demo_server.client, region="Puebla", risk_profile="B", page_size=9) == expected
    assert customer_pages(demo_server.client, text="ueb", risk_profile="B", page_size=50) == expected


def test_search_customers_matches_names_alike_on_both_databases(repository):
    """MariaDB's default collation ignores case and accents, SQLite's LIKE folds ASCII only: the
    same search must still find the same customers on both (region and risk exactly, text folded)."""
    from server.data.repository import SEARCH_CONDITIONS
    model = repository.get_customer(golden.customer_ids()[0])
    spellings = {"ZZR01": ("Querétaro", "A1"), "ZZR02": ("QUERÉTARO", "a1"), "ZZR03": ("Queretaro", "A1"),
                 "ZZR04": ("Zona 5%_Norte!", "B")}
    repository.put_customers(replace(model, customer_id=customer_id, region=region, risk_profile_name=risk)
                             for customer_id, (region, risk) in spellings.items())
    try:
        def found(**query) -> list[str]:
            return [c.customer_id for c in repository.search_customers(
                id_prefix=query.get("id_prefix", "ZZR"), text=query.get("text", ""), region=query.get("region", ""),
                risk_profile=query.get("risk", ""), descending=False, after=None, limit=10)]

        assert found() == ["ZZR01", "ZZR02", "ZZR03", "ZZR04"]
        assert found(text="5%_n") == ["ZZR04"] and found(text="%") == found(text="_") == found(text="!") == ["ZZR04"]
        assert found(text="5_%") == [] and found(text="zona 5%") == ["ZZR04"]  # % and _ match only themselves
        assert found(region="Querétaro") == ["ZZR01"] and found(region="querétaro") == []
        assert found(risk="A1") == ["ZZR01", "ZZR03"] and found(risk="a1") == ["ZZR02"]
        assert found(text="querét") == ["ZZR01", "ZZR02"] and found(text="RÉTA") == ["ZZR01", "ZZR02"]
        assert found(text="retaro") == ["ZZR03"] and found(text="zzr0") == ["ZZR01", "ZZR02", "ZZR03", "ZZR04"]

        def plan(cursor):  # the exact match still reads the region's index
            condition = SEARCH_CONDITIONS[repository.backend]["region"]
            cursor.execute(("EXPLAIN " if repository.backend == "mysql" else "EXPLAIN QUERY PLAN ")
                           + repository._sql(f"SELECT customer_id FROM customers WHERE {condition}"),
                           ("Querétaro",) * condition.count("%s"))
            return str(cursor.fetchall())
        assert "idx_customers_region" in repository._run("test", plan, None)
    finally:
        def delete(cursor):
            cursor.execute("DELETE FROM customers WHERE customer_id LIKE 'ZZR%'")
        repository._run("test", delete, None)


def test_migrate_adds_the_customer_indexes_to_an_existing_database(repository):
    from server.data.repository import INDEX_EXISTS

    def run(statement: str, *values):
        def work(cursor):
            cursor.execute(repository._sql(statement), values)
            return cursor.fetchall()
        return repository._run("test", work, None)

    names = ("idx_customers_region", "idx_customers_risk_profile")
    for name in names:  # a database from before the search
        run(f"DROP INDEX {name} ON customers" if repository.backend == "mysql" else f"DROP INDEX {name}")
    exists = lambda name: run(INDEX_EXISTS[repository.backend], "customers", name)[0][0] > 0  # noqa: E731
    assert not any(map(exists, names))
    repository.migrate()
    assert all(map(exists, names))


def test_the_commands_print_what_the_calls_answer(demo_server):
    from test_cli import run_cli
    client = demo_server.client

    def ids(output: str, prefix: str) -> list[str]:
        return [line.split()[0] for line in output.splitlines() if line.strip().startswith(prefix)]

    first = run_cli(demo_server, "search", "mazda", "3", "--order-by", "price desc", "--page-size", "4")
    assert first.returncode == 0, first.stderr
    page = client.search_inventory("mazda 3", order_by="price desc", page_size=4)
    assert first.stdout.startswith(f"{page.total_size} cars match; 4 shown")
    assert ids(first.stdout, "INV") == [c.car_id for c in page.cars]
    token = first.stdout.splitlines()[-1].removeprefix("next page: --page-token ")
    second = run_cli(demo_server, "search", "mazda", "3", "--order-by", "price desc", "--page-size", "4",
                     "--page-token", token)
    assert ids(second.stdout, "INV") == [c.car_id for c in client.search_inventory(
        "mazda 3", order_by="price desc", page_size=8).cars[4:]]
    facets = client.inventory_facets(filters={"brands": ["Mazda"], "price_max": 400000})
    shown = run_cli(demo_server, "facets", "--brand", "Mazda", "--price-max", "400000").stdout.splitlines()
    assert shown[0] == f"{facets.total_cars:,} cars, {facets.promotion_count:,} on promotion"
    assert shown[2] == f"brands: Mazda {facets.total_cars:,}"
    customers = run_cli(demo_server, "customers", "C00", "--risk", "A1", "--region", "CDMX", "--page-size", "5")
    assert ids(customers.stdout, "C0") == [c.customer_id for c in client.search_customers(
        id_prefix="C00", risk_profile="A1", region="CDMX", page_size=5).customers]
    grid = ("--grid-cac-max", "20000", "--grid-cac-step", "2000", "--grid-kavak-total-enabled", "off")
    searched = run_cli(demo_server, "subsidy", "C00042", "--max-viable", "2", *grid)
    *_, last = client.find_minimum_subsidy(customer_id="C00042", max_viable=2, grid={
        "cac_max": 20000, "cac_step": 2000, "kavak_total_enabled": False})
    s = last.summary
    assert searched.stdout.startswith(f"{s.viable} of {s.searched} cars viable ({s.candidates} candidates, "
                                      f"{s.iterations:,} combinations tried)"), searched.stdout
    bad = run_cli(demo_server, "subsidy", "C00042", "--grid-cac-step", "0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: grid.cac_step" in bad.stderr


def test_a_page_token_goes_on_after_the_cars_sold_since(tmp_path):
    """Keyset tokens: the cars sold between two pages (the last one shown among them) neither
    shift the next page nor make it repeat or skip a car."""
    import time

    from conftest import load_golden, make_settings, start_server
    from server.app import open_repository
    environ = {"TRADEUP_SQLITE_PATH": str(tmp_path / "sold.db")}
    load_golden(environ)
    running = start_server(environ)
    repository = open_repository(make_settings(environ))
    try:
        before = [c.car_id for c in running.client.search_inventory("toyota", order_by="price desc",
                                                                     page_size=500).cars]
        first = running.client.search_inventory("toyota", order_by="price desc", page_size=10)
        sold = [first.cars[-1].car_id, before[10], before[12]]  # the last shown, and two of the next page
        for car_id in sold:
            repository.set_car_available(car_id, False)
        deadline = time.monotonic() + 10
        while running.client.search_inventory("toyota", page_size=1).total_size != len(before) - 3:
            assert time.monotonic() < deadline, "the sale did not reach the snapshot in 10 s"
            time.sleep(0.1)
        second = running.client.search_inventory("toyota", order_by="price desc", page_size=10,
                                                 page_token=first.next_page_token)
        assert [c.car_id for c in second.cars] == [i for i in before[10:] if i not in sold][:10]
    finally:
        repository.database.close()
        running.stop()
