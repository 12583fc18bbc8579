"""Bad inputs raise EngineInputError naming the field; the implementation choice is explicit."""
import math
import sys
import threading

import pytest

from engine_ext import (CustomerTerms, EngineInputError, Fees, KernelUnavailableError, PricingParams,
                        SubsidyGrid, TierBounds, load_kernel)
from engine_ext.params import DERIVED_LIMIT, OVERRIDDEN_DERIVED_LIMIT
from engine_ext.plan import build_offer_plan

GOOD = dict(current_monthly_payment=5000.0, vehicle_equity=100_000.0, risk_profile_name="A1", risk_profile_index=3)


def customer(**changes):
    return CustomerTerms(**{**GOOD, **changes})


@pytest.mark.parametrize("changes, field", [
    ({"current_monthly_payment": 0.0}, "current_monthly_payment"),
    ({"current_monthly_payment": -10.0}, "current_monthly_payment"),
    ({"current_monthly_payment": math.nan}, "current_monthly_payment"),
    ({"vehicle_equity": math.inf}, "vehicle_equity"),
    ({"vehicle_equity": "lots"}, "vehicle_equity"),
    ({"risk_profile_index": -1}, "risk_profile_index"),
])
def test_bad_customer(changes, field):
    with pytest.raises(EngineInputError) as err:
        customer(**changes)
    assert err.value.field == field


@pytest.mark.parametrize("price", [math.nan, math.inf, -1.0, 0.0, 1e12])
def test_bad_car_price_names_the_car(engine, price):
    with pytest.raises(EngineInputError) as err:
        engine.price(customer(), ["A", "B", "C"], [200_000.0, price, 300_000.0], PricingParams())
    assert err.value.field == "cars[1].price"
    with pytest.raises(EngineInputError) as err:
        engine.minimum_subsidy(customer(), ["A", "B"], [200_000.0, price], PricingParams())
    assert err.value.field == "cars[1].price"
    with pytest.raises(EngineInputError):
        engine.schedule(customer(), price, 48, PricingParams())


def test_profile_index_beyond_the_table(engine):
    with pytest.raises(EngineInputError) as err:
        engine.price(customer(risk_profile_index=26), ["A"], [200_000.0], PricingParams())
    assert err.value.field == "risk_profile_index"


def test_ids_and_prices_must_pair_up(engine):
    with pytest.raises(EngineInputError) as err:
        engine.price(customer(), ["A", "B"], [200_000.0], PricingParams())
    assert err.value.field == "cars"


@pytest.mark.parametrize("build, field", [
    (lambda: PricingParams(terms=(12, 18)), "terms"),
    (lambda: PricingParams().with_overrides(terms=[84]), "terms"),
    (lambda: PricingParams(rate_override=150.0), "rate_override"),
    (lambda: PricingParams(rate_override=-0.1), "rate_override"),
    (lambda: PricingParams().with_overrides(interest_rate=math.nan), "rate_override"),
    (lambda: PricingParams(interest_rate_table={"A": 2000}), "interest_rate_table.A"),
    (lambda: PricingParams(down_payment_rows=((0.2,) * 5,) * 26), "down_payment_table.rows_by_risk_profile_index"),
    (lambda: PricingParams(down_payment_rows=()), "down_payment_table.rows_by_risk_profile_index"),
    (lambda: PricingParams(down_payment_rows=((0.2,) * 6,) * 3), "risk_profile_index.A1"),
    (lambda: PricingParams(down_payment_rows=((0.2, 0.2, 0.2, 0.2, 0.2, math.nan),) * 26),
     "down_payment_table.rows_by_risk_profile_index[0][5]"),
    (lambda: PricingParams(fees=Fees(service_fee_pct=1.5)), "fees.service_fee_pct"),
    (lambda: PricingParams().with_overrides(insurance_amount=-1.0), "fees.insurance_amount"),
    (lambda: PricingParams().with_overrides(bogus=1.0), "bogus"),
    (lambda: TierBounds(0.1, 0.05, 0.25, 1.0), "tiers"),
    (lambda: SubsidyGrid(term_order=(48, 48)), "subsidy.term_order"),
    (lambda: SubsidyGrid(cac_step=0.0), "subsidy.cac_step"),
    (lambda: PricingParams(subsidy=SubsidyGrid(term_order=(84,))), "subsidy.term_order"),
    (lambda: PricingParams.from_dict({"unknown": 1}), "unknown"),
    (lambda: PricingParams.from_dict({"fees": {"service_fee": 0.1}}), "fees.service_fee"),
])
def test_bad_parameters_name_the_field(build, field):
    with pytest.raises(EngineInputError) as err:
        build()
    assert err.value.field == field


def test_rate_above_one_is_percent():
    assert PricingParams(rate_override=18.5).rate_override == pytest.approx(0.185)


def test_term_adjustment_cannot_push_the_rate_out_of_range(engine):
    params = PricingParams(rate_override=0.0, term_rate_adjustments={60: -0.05})
    with pytest.raises(EngineInputError) as err:
        engine.price(customer(), ["A"], [300_000.0], params)
    assert err.value.field == "interest_rate"


def test_zero_rate_prices_as_straight_line(engine):
    params = PricingParams(rate_override=0.0, terms=(12,), fees=Fees(kavak_total_amount=0, insurance_amount=0))
    rows = engine.schedule(customer(), 300_000.0, 12, params)
    assert all(r.interes == 0.0 for r in rows)
    assert sum(r.capital for r in rows) == pytest.approx(rows[0].saldo_insoluto + params.fees.gps_installation_fee * 1.16)


def test_compiled_kernel_is_built_and_is_the_default(monkeypatch):
    """Fails if the extension silently did not build."""
    monkeypatch.delenv("TRADEUP_ENGINE", raising=False)
    assert load_kernel().IMPLEMENTATION == "compiled"
    assert load_kernel("python").IMPLEMENTATION == "python"
    monkeypatch.setenv("TRADEUP_ENGINE", "python")
    assert load_kernel().IMPLEMENTATION == "python"


def test_missing_extension_is_an_error_that_says_how_to_build(monkeypatch):
    monkeypatch.delenv("TRADEUP_ENGINE", raising=False)
    monkeypatch.setitem(sys.modules, "engine_ext._kernel", None)  # makes the import fail
    with pytest.raises(KernelUnavailableError, match="pip install -e"):
        load_kernel()


def test_unknown_implementation_is_rejected():
    with pytest.raises(EngineInputError) as err:
        load_kernel("fortran")
    assert err.value.field == "TRADEUP_ENGINE"


def test_one_requests_overrides_do_not_leak(engine):
    base = PricingParams()
    cheap = base.with_overrides(service_fee_pct=0.0, interest_rate=0.05)
    first = list(engine.price(customer(), ["A"], [250_000.0], base))
    engine.price(customer(), ["A"], [250_000.0], cheap)
    assert list(engine.price(customer(), ["A"], [250_000.0], base)) == first
    assert base.fees.service_fee_pct == 0.04 and base.rate_override is None


def test_derived_parameters_and_term_columns_are_computed_once_per_parameters():
    base = PricingParams()
    overridden = base.with_overrides(service_fee_pct=0.03, terms=[24, 12])
    assert base.with_overrides(terms=(24, 12), service_fee_pct=0.03) is overridden  # the order given aside
    assert overridden.terms == (12, 24) and overridden.fees.service_fee_pct == 0.03
    assert base.with_overrides(service_fee_pct=0.04) is not overridden and base.with_overrides() is base
    plan = build_offer_plan(customer(), overridden)
    assert build_offer_plan(customer(current_monthly_payment=9_000.0), overridden).columns is plan.columns
    other_row = build_offer_plan(customer(risk_profile_index=0), overridden)
    assert other_row.columns is not plan.columns and other_row.columns.down_fractions != plan.columns.down_fractions
    # New parameters (a new settings version) share nothing with the old ones, and compute the same.
    again = build_offer_plan(customer(), PricingParams().with_overrides(service_fee_pct=0.03, terms=[12, 24]))
    assert again.columns is not plan.columns and again.columns == plan.columns
    for k in range(DERIVED_LIMIT + 100):  # bounded, however many overrides callers send
        base.with_overrides(service_fee_pct=k / 1e6)
    assert len(base._derived) == DERIVED_LIMIT
    for k in range(OVERRIDDEN_DERIVED_LIMIT + 10):  # and what each set of overrides keeps, in all
        overridden.derived(("value", k), lambda: k)
    assert len(overridden._derived) == OVERRIDDEN_DERIVED_LIMIT


def test_derived_values_are_added_and_evicted_safely_by_many_threads():
    params, failures = PricingParams(), []

    def derive(first: int) -> None:
        try:
            for k in range(first, first + 2_000):
                assert params.derived(("value", k % 700), lambda k=k: k % 700) == k % 700
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=derive, args=(start * 97,)) for start in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two steps: the races show
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert not failures and len(params._derived) == DERIVED_LIMIT
