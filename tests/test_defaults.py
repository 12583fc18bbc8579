"""Safe defaults: no fake data in a MySQL database unless asked, DDL that MySQL accepts too,
and term lists both kernels can price."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import golden_data as golden
from conftest import ROOT, load_golden
from engine_ext import EngineInputError, PricingParams
from engine_ext.params import MAX_TERMS
from server.app import open_repository, prepare_database
from server.config import ConfigError, load_settings
from server.data.repository import CHANGE_SCHEMA, INDEX_EXISTS, INDEXES, SCHEMA


def test_demo_data_only_in_the_embedded_database_or_on_request(mysql_server_url, tmp_path):
    sqlite = open_repository(load_settings({"TRADEUP_SQLITE_PATH": str(tmp_path / "fresh.db")}))
    try:
        prepare_database(sqlite, load_settings({}).database.seed_demo_data)  # the default: seed
        assert sqlite.counts() == (4000, 5000)
    finally:
        sqlite.database.close()

    environ = {"TRADEUP_DATABASE_URL": mysql_server_url}
    mysql = open_repository(load_settings(environ))
    try:
        mysql.migrate()
        mysql.delete_all()
        prepare_database(mysql, load_settings(environ).database.seed_demo_data)  # the same default
        assert mysql.counts() == (0, 0)
        seeded = subprocess.run([sys.executable, "-m", "server", "seed", "--cars", "5", "--customers", "7"],
                                cwd=ROOT, env={**os.environ, **environ}, capture_output=True, text=True, timeout=120)
        assert seeded.returncode == 0, seeded.stderr
        assert mysql.counts() == (5, 7) and "holds 5 cars and 7 customers" in seeded.stdout
    finally:
        mysql.database.close()
        load_golden(environ)


def test_indexes_are_created_without_mariadb_only_syntax(repository):
    assert not any("CREATE INDEX" in statement for statement in SCHEMA + CHANGE_SCHEMA)
    with repository.database.cursor() as cursor:
        for name, table, _ in INDEXES:
            cursor.execute(f"DROP INDEX {name} ON {table}" if repository.backend == "mysql" else f"DROP INDEX {name}")
    repository.migrate()
    repository.migrate()  # idempotent: the catalogue is asked first
    with repository.database.cursor() as cursor:
        for name, table, _ in INDEXES:
            cursor.execute(repository._sql(INDEX_EXISTS[repository.backend]), (table, name))
            assert cursor.fetchone()[0], name  # MySQL counts one row per indexed column
    plan = json.dumps(repository.explain_prefilter(), default=str)
    assert INDEXES[0][0] in plan


def many_terms(count: int) -> dict:
    """Parameters pricing `count` terms from 12 months on (covering the subsidy search's terms)."""
    terms = list(range(12, 12 + count))
    return {"terms": terms, "down_payment_table": {"columns_terms": terms,
                                                   "rows_by_risk_profile_index": [[0.2] * count] * 26}}


def test_configured_terms_are_capped_at_what_the_compiled_kernel_prices(tmp_path):
    assert MAX_TERMS == 64
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"business": many_terms(MAX_TERMS + 1)}))
    with pytest.raises(ConfigError) as err:
        load_settings({"TRADEUP_CONFIG_FILES": str(config)})
    assert err.value.key == "business.terms" and "at most 64 terms, got 65" in str(err.value)
    sixty_five_columns = PricingParams.from_dict({**many_terms(MAX_TERMS + 1), "terms": [12]})
    with pytest.raises(EngineInputError) as err:  # a request's override
        sixty_five_columns.with_overrides(terms=list(range(12, 77)))
    assert err.value.field == "terms"
    with pytest.raises(EngineInputError) as err:
        PricingParams.from_dict({**many_terms(MAX_TERMS + 1), "terms": [12],
                                 "subsidy_search": {"term_order": list(range(12, 77))}})
    assert err.value.field == "subsidy.term_order"


def test_both_kernels_price_the_longest_term_list_alike(engine):
    """64 terms (the cap) price on either kernel, with the same results."""
    params = PricingParams.from_dict(many_terms(MAX_TERMS))
    customer = next(iter(golden.customers().values()))
    cars = golden.cars()[:20]
    offers = engine.price(golden.terms_of(customer), [c.car_id for c in cars], [c.price for c in cars], params)
    assert len(offers.plan.columns.terms) == MAX_TERMS and len(offers) > 0
    reference = load_twin_offers(params, customer, cars)
    assert [(o.car_id, o.term, o.monthly_payment) for o in offers] == reference


def load_twin_offers(params, customer, cars):
    from engine_ext import Engine, load_kernel
    twin = Engine(load_kernel("python"), workers=1)
    try:
        offers = twin.price(golden.terms_of(customer), [c.car_id for c in cars], [c.price for c in cars], params)
        return [(o.car_id, o.term, o.monthly_payment) for o in offers]
    finally:
        twin.close()
