"""Every reference vector reproduced by both kernels (SPEC §3, golden/README.md tolerances), on
whatever set TRADEUP_GOLDEN_DIR names: the tests parametrize over what the set holds."""
import gzip
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import golden_data as golden


def test_default_parameters_are_the_audited_ones():
    from engine_ext import PricingParams
    assert golden.params() == PricingParams()
    assert PricingParams.from_dict(golden.params().to_dict()) == golden.params()


@pytest.mark.parametrize("case", range(len(golden.offers())), ids=lambda k: golden.offers()[k]["customer_id"])
def test_offers_match_golden(engine, case):
    record = golden.offers()[case]
    customer = golden.customers()[record["customer_id"]]
    car_ids = record["cars"]
    prices = [golden.inventory()[car]["car_price"] for car in car_ids]
    offers = {(o.car_id, o.term): o for o in engine.price(golden.terms_of(customer), car_ids, prices, golden.params())}
    expected = {(o["car_id"], o["term"]): o for o in record["offers"]}
    assert offers.keys() == expected.keys()
    for key, want in expected.items():
        got = asdict(offers[key])
        assert got["tier"] == want["tier"], key
        for field, value in want.items():
            if field not in ("car_id", "term", "tier"):
                assert golden.close(got[field], value), (key, field, got[field], value)


def test_offer_order_follows_the_spec(engine):
    record = golden.offers()[0]
    customer = golden.customers()[record["customer_id"]]
    prices = [golden.inventory()[car]["car_price"] for car in record["cars"]]
    ranked = list(engine.price(golden.terms_of(customer), record["cars"], prices, golden.params()))
    tier_order = {"Refresh": 0, "Upgrade": 1, "Max Upgrade": 2}
    keys = [(tier_order[o.tier], -o.npv, o.monthly_payment, o.car_id, o.term) for o in ranked]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def pair_id(k):
    record = golden.subsidies()[k]
    return f'{record["customer"]["customer_id"]}-{record["car"]["car_id"]}'


@pytest.mark.parametrize("case", range(len(golden.subsidies())), ids=pair_id)
def test_subsidy_matches_golden(engine, case):
    record = golden.subsidies()[case]
    car = record["car"]
    (got,) = engine.minimum_subsidy(golden.terms_of(record["customer"]), [car["car_id"]], [car["car_price"]],
                                    golden.params())
    want = record["result"]
    assert (got.viable, got.failure_reason, got.term, got.iterations_tried) == \
        (want["viable"], want["failure_reason"], want["term"], want["iterations_tried"])
    assert (got.service_fee_pct, got.cac_bonus, got.cxa_pct) == \
        (want["service_fee_pct"], want["cac_bonus"], want["cxa_pct"])
    for field in ("monthly_payment", "payment_delta", "npv", "loan_amount"):
        assert golden.close(getattr(got, field), want[field]), (field, getattr(got, field), want[field])


@pytest.mark.parametrize("case", range(len(golden.schedules())))
def test_amortization_matches_golden(engine, case):
    record = golden.schedules()[case]
    offer = record["offer"]
    customer = golden.customers()[record["customer_id"]]
    price = golden.inventory()[offer["car_id"]]["car_price"]
    rows = engine.schedule(golden.terms_of(customer), price, offer["term"], golden.params())
    assert len(rows) == len(record["schedule"]) == offer["term"]
    assert golden.close(rows[0].exigible, offer["monthly_payment"])
    for got, want in zip(rows, record["schedule"]):
        for field, value in asdict(got).items():
            assert golden.close(value, want[field]), (got.cuota, field, value, want[field])


# The tests that read reference vectors, run again on a smaller set in the same format.
GOLDEN_TESTS = ("tests/test_engine_golden.py", "tests/test_wire.py::test_golden_offers_encode_like_protobuf",
                "tests/test_engine_properties.py::test_fan_out_gives_the_single_thread_result",
                "tests/test_engine_oracle.py::test_near_tie_reference_pairs_are_numpy_financial_decisions",
                "tests/test_engine_oracle.py::test_reference_schedules_are_numpy_financial_within_tolerance")


def test_golden_tests_run_on_any_set(tmp_path):
    """7 customers with their pairs and schedules, and two pairs whose customer travels inline:
    every golden test passes, with one case per record the set holds."""
    golden.write_subset(tmp_path / "set", 7)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not run_on_any_set", *GOLDEN_TESTS],
        cwd=Path(__file__).resolve().parents[1], env={**os.environ, "TRADEUP_GOLDEN_DIR": str(tmp_path / "set")},
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    offers, pairs, schedules = (sum(1 for _ in gzip.open(tmp_path / "set" / name, "rt"))
                                for name in ("offers.jsonl.gz", "subsidy.jsonl.gz", "amortization.jsonl.gz"))
    assert offers == 7 and pairs > 2 and schedules > 0
    # Per kernel: each offer record twice (vectors, wire), order, each pair, each schedule, fan-out x3;
    # then the parameters, the near ties and the oracle over each schedule.
    expected = 2 * (2 * offers + 1 + pairs + schedules + 3) + 1 + 1 + schedules
    assert f"{expected} passed" in run.stdout, run.stdout[-2000:]


def test_the_other_tests_run_on_any_set_naming_none_of_its_ids():
    """The server-level tests take their customers, cars and counts from the set (golden_data), so
    they run on any set too: no test source spells out an id of this one."""
    ids = set(golden.customer_ids()) | set(golden.inventory())
    literal = re.compile(r"""(["'])([A-Za-z0-9_-]+)\1""")
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        named = {text for _, text in literal.findall(path.read_text())} & ids
        assert not named, f"{path.name} names {sorted(named)}: take them from golden_data instead"
