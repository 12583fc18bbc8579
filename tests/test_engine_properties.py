"""Compiled kernel == pure twin, bit for bit, on random inputs; schedule invariants; fan-out."""
from array import array
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import golden_data as golden
from engine_ext import CustomerTerms, Engine, Fees, PricingParams, TierBounds, load_kernel
from engine_ext import kernel_py
from engine_ext.params import DEFAULT_RATES
from server.config import EngineSettings

compiled = load_kernel("compiled")
profiles = st.sampled_from(sorted(DEFAULT_RATES) + ["UNKNOWN", ""])
money = st.floats(min_value=1_000, max_value=3_000_000, allow_nan=False)
prices = st.lists(st.floats(min_value=10_000, max_value=3_000_000, allow_nan=False), min_size=1, max_size=60)
fees = st.builds(Fees, service_fee_pct=st.floats(0, 0.1), cxa_pct=st.floats(0, 0.1), cac_bonus=st.floats(0, 20_000),
                 kavak_total_amount=st.sampled_from([0.0, 25_000.0]), insurance_amount=st.floats(0, 30_000))
params_st = st.builds(lambda f, rate, terms: PricingParams(fees=f, rate_override=rate, terms=terms),
                      fees, st.one_of(st.none(), st.floats(1e-6, 0.9), st.just(0.0)),
                      st.lists(st.sampled_from([12, 24, 36, 48, 60, 72]), min_size=1, max_size=6))


def customer_for(profile, payment, equity):
    params = PricingParams()
    return CustomerTerms(payment, equity, profile, params.profile_index(profile))


def run_both(customer, car_prices, params):
    ids = [f"CAR{k:05d}" for k in range(len(car_prices))]
    results = []
    for kernel in (compiled, kernel_py):
        engine = Engine(kernel, workers=1)
        offers = engine.price(customer, ids, car_prices, params)
        results.append((offers, engine.minimum_subsidy(customer, ids[:3], car_prices[:3], params)))
    return results


def columns_of(offer_set):
    out = offer_set.columns
    return (list(offer_set.order), offer_set.tier_counts, offer_set.rejected,
            *(list(getattr(out, name)) for name in out.__slots__))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profiles, st.floats(500, 60_000), st.floats(-300_000, 1_500_000), prices, params_st)
@example("A1", 5398.16, 116746.91, [369999.0], PricingParams())   # a golden customer
@example("B", 7000.0, -50_000.0, [200_000.0], PricingParams())    # negative equity
def test_compiled_equals_twin(profile, payment, equity, car_prices, params):
    (c_offers, c_subsidy), (p_offers, p_subsidy) = run_both(customer_for(profile, payment, equity), car_prices, params)
    assert columns_of(c_offers) == columns_of(p_offers)
    assert c_subsidy == p_subsidy


@settings(max_examples=60, deadline=None)
@given(profiles, st.integers(10, 3_000), st.integers(3, 40), st.floats(2_000, 40_000))
def test_equity_exactly_at_down_payment(profile, thousands, sixty_fourths, payment):
    """E == D is feasible (infeasible only when E < D), in both kernels. Dyadic fractions and no
    CXA/GPS deduction make E and D exactly equal in binary floating point."""
    price, fraction = thousands * 1024.0, sixty_fourths / 64
    params = replace(PricingParams(), fees=Fees(cxa_pct=0.0, gps_installation_fee=0.0),
                     down_payment_rows=tuple((fraction,) * 6 for _ in range(26)))
    customer = customer_for(profile, payment, price * fraction)
    (c_offers, _), (p_offers, _) = run_both(customer, [price], params)
    assert columns_of(c_offers) == columns_of(p_offers)
    assert c_offers.rejected["down_payment_not_met"] == 0
    (below, _), _ = run_both(customer_for(profile, payment, price * fraction - 0.01), [price], params)
    assert below.rejected["down_payment_not_met"] == 6


@settings(max_examples=60, deadline=None)
@given(profiles, st.floats(3_000, 30_000), st.floats(50_000, 600_000), st.floats(1.3, 3.0), st.integers(0, 3))
def test_delta_exactly_on_each_tier_bound(profile, payment, equity, price_ratio, bound):
    """Put a tier bound exactly on an offer's delta: every bound is inclusive from below for the
    Refresh floor and from above for the others, in both kernels."""
    customer = customer_for(profile, payment, equity)
    price = equity * price_ratio
    probe = Engine(kernel_py, workers=1).price(customer, ["X"], [price], PricingParams())
    deltas = [d for d, s in zip(probe.columns.delta, probe.columns.status) if s not in (-1, -2)]
    assume(deltas and deltas[0] < 50)
    delta = deltas[0]
    edges = [delta + 0.01 * (k - bound) for k in range(4)]
    edges[bound] = delta
    params = PricingParams(tiers=TierBounds(*edges))
    (c_offers, _), (p_offers, _) = run_both(customer, [price], params)
    assert columns_of(c_offers) == columns_of(p_offers)
    expected_tier = {0: 1, 1: 1, 2: 2, 3: 3}[bound]
    assert c_offers.columns.status[0] == expected_tier


@settings(max_examples=40, deadline=None)
@given(profiles, st.floats(2_000, 40_000), st.floats(-100_000, 800_000), money,
       st.sampled_from([12, 24, 36, 48, 60, 72]), params_st)
def test_schedule_parity_and_invariants(profile, payment, equity, price, term, params):
    customer = customer_for(profile, payment, equity)
    twin = Engine(kernel_py, workers=1).schedule(customer, price, term, params)
    rows = Engine(compiled, workers=1).schedule(customer, price, term, params)
    assert rows == twin
    fees = params.fees
    gps = fees.gps_installation_fee * (1 + params.iva_rate)
    loan = price - (equity + fees.cac_bonus - price * fees.cxa_pct - gps)
    assume(loan > 0)
    # Principal of L, SF and KT sums to each amount: their balances end at zero ...
    last = rows[-1]
    for balance in (last.end_balance_main, last.end_balance_service_fee, last.end_balance_kavak_total):
        assert abs(balance) < 1e-6 * max(1.0, loan)
    # ... and in total the principal paid is L + SF + KT plus INS once per full 12-month cycle.
    paid = sum(r.capital for r in rows) - gps
    financed = loan + price * fees.service_fee_pct + fees.kavak_total_amount
    assert paid == pytest.approx(financed + fees.insurance_amount * (term // 12), rel=1e-9, abs=1e-6)
    for row in rows:
        if row.cuota % 12 == 0:
            assert abs(row.end_balance_insurance) < 1e-6 * max(1.0, fees.insurance_amount)


def test_fan_out_at_the_production_chunk_sizes_gives_the_single_thread_result(kernel):
    """The chunk sizes the server runs with (EngineSettings' defaults): a request of more cars
    than one offer chunk and a subsidy search of more than one chunk are spread over the pool."""
    record = max(golden.offers(), key=lambda r: len(r["cars"]))
    customer = golden.terms_of(golden.customers()[record["customer_id"]])
    defaults = EngineSettings()
    n = 3 * defaults.offer_chunk_cars + 100
    ids = [f"{car}-{k}" for k in range(n // len(record["cars"]) + 1) for car in record["cars"]][:n]
    car_prices = array("d", [golden.inventory()[car.rsplit("-", 1)[0]]["car_price"] for car in ids])
    searched = 3 * defaults.subsidy_chunk_cars + 5
    single = Engine(kernel, workers=1)
    fanned = Engine(kernel, workers=2, offer_chunk_cars=defaults.offer_chunk_cars,
                    subsidy_chunk_cars=defaults.subsidy_chunk_cars)
    try:
        assert columns_of(fanned.price(customer, ids, car_prices, golden.params())) == \
            columns_of(single.price(customer, ids, car_prices, golden.params()))
        assert fanned.minimum_subsidy(customer, ids[:searched], car_prices[:searched], golden.params()) == \
            single.minimum_subsidy(customer, ids[:searched], car_prices[:searched], golden.params())
    finally:
        single.close()
        fanned.close()


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_fan_out_gives_the_single_thread_result(kernel, workers):
    record = max(golden.offers(), key=lambda r: len(r["cars"]))
    customer = golden.terms_of(golden.customers()[record["customer_id"]])
    ids = record["cars"]
    car_prices = array("d", [golden.inventory()[car]["car_price"] for car in ids])
    single = Engine(kernel, workers=1)
    fanned = Engine(kernel, workers=workers, offer_chunk_cars=1, subsidy_chunk_cars=1)
    try:
        assert columns_of(fanned.price(customer, ids, car_prices, golden.params())) == \
            columns_of(single.price(customer, ids, car_prices, golden.params()))
        assert fanned.minimum_subsidy(customer, ids[:40], car_prices[:40], golden.params()) == \
            single.minimum_subsidy(customer, ids[:40], car_prices[:40], golden.params())
    finally:
        single.close()
        fanned.close()


@pytest.mark.parametrize("limit", [1, 7, 50, 100_000])
def test_ranking_the_best_only_gives_the_head_of_the_full_ranking(kernel, limit):
    """rank_offers with a limit (a call that returns its top N) orders only the best N: the
    same slots as the head of the full ranking, ties included, and the counts of all offers."""
    for record in golden.spread([r for r in golden.offers() if len(r["offers"]) > 10], 8):
        customer = golden.terms_of(golden.customers()[record["customer_id"]])
        ids = record["cars"]
        offers = Engine(kernel, workers=1).price(customer, ids, [golden.inventory()[c]["car_price"] for c in ids],
                                                 golden.params())
        ranks = array("l", range(len(ids)))
        for mask in (0b1110, 0b0100, 0b1010):
            full, counts = kernel.rank_offers(offers.plan, offers.columns, len(ids), ranks, mask)
            best, best_counts = kernel.rank_offers(offers.plan, offers.columns, len(ids), ranks, mask, limit)
            assert list(best) == list(full)[:limit] and list(best_counts) == list(counts)
