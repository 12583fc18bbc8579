"""The pure-Python kernel: the executable specification of SPEC §2-§3, one function per rule.

`_kernel.pyx` implements the same five entry points with the same arithmetic in the same
order, so the two agree to the last bit (tests check this on the golden vectors and on
random inputs). Inputs are validated before they get here (`params.py`, `engine.py`),
except the car prices, which each kernel checks itself.
"""
from __future__ import annotations

import heapq
import math
from array import array

from .constants import (
    REJECT_DELTA_ABOVE_CEILING, REJECT_DELTA_BELOW_FLOOR, REJECT_DOWN_PAYMENT_NOT_MET,
    REJECT_LOAN_NOT_POSITIVE, SCHEDULE_COLUMNS, SUBSIDY_DOWN_PAYMENT_NOT_MET, SUBSIDY_LTV_TOO_HIGH,
    SUBSIDY_NPV_BELOW_MINIMUM, SUBSIDY_PAYMENT_DELTA_TOO_HIGH, SUBSIDY_VIABLE, TIER_MAX_UPGRADE,
    TIER_REFRESH, TIER_UPGRADE,
)
from .plan import components, first_interest, first_principal, growth_powers

IMPLEMENTATION = "python"
MAX_PRICE = 1e10  # MXN; anything above is a data error, not a car


# --- SPEC §2: the stage-1 match, against an inventory snapshot -----------------------------
def match_cars(years, prices, kilometers, regions, min_price, min_year, max_km, region, limit):
    """Indices of the snapshot rows that are logical trade-ups (price > min_price, year >=
    min_year, km < max_km, same region when region >= 0), in snapshot order, at most `limit`.
    The snapshot is sorted year desc, price desc, car_id asc, so this is the SQL order."""
    found = array("l")
    for row in range(len(prices)):
        if len(found) >= limit:
            break
        if (prices[row] > min_price and years[row] >= min_year and kilometers[row] < max_km
                and (region < 0 or regions[row] == region)):
            found.append(row)
    return found


def match_filtered(years, prices, kilometers, regions, brands, colors, promotions, min_price, min_year, max_km, region,
                   price_low, price_high, year_low, year_high, km_high, brand_ok, region_ok, color_ok,
                   promotion_only, limit):
    """match_cars, among the rows that also pass the consideration filters: price and year within
    [low, high], km <= km_high, brand_ok/region_ok/color_ok[code] true for the row's names (the
    names' codes index these tables), on promotion if promotion_only. At most `limit`, in order."""
    found = array("l")
    for row in range(len(prices)):
        if len(found) >= limit:
            break
        price, year, km = prices[row], years[row], kilometers[row]
        if (price > min_price and year >= min_year and km < max_km and (region < 0 or regions[row] == region)
                and price_low <= price <= price_high and year_low <= year <= year_high and km <= km_high
                and brand_ok[brands[row]] and region_ok[regions[row]] and color_ok[colors[row]]
                and (not promotion_only or promotions[row])):
            found.append(row)
    return found


def take(source, rows):
    """array of source[r] for r in rows: the snapshot columns of a selection."""
    return array(source.typecode, (source[r] for r in rows))


# --- SPEC §3: one offer ----------------------------------------------------------------------
def is_valid_price(price):
    return math.isfinite(price) and 0.0 < price <= MAX_PRICE


def effective_equity(plan, cac_bonus, cxa):
    """E = vehicle equity + CAC - CXA - GPS installation."""
    return plan.vehicle_equity + cac_bonus - cxa - plan.gps_install


def npv(plan, service_fee, cxa, cac_bonus):
    """Simplified margin: SF + CXA - base deduction - CAC."""
    return service_fee + cxa - plan.npv_deduction - cac_bonus


def first_payment(plan, t, loan, service_fee):
    """The first month's payment, component by component as the audited engine adds it (SPEC §3):
    the four principals (L, SF, KT, INS), then the four interests with IVA, then G1, then G0."""
    cols = plan.columns
    i, j = cols.monthly_rates[t], cols.monthly_rates_iva[t]
    growth, divisor = cols.growths[t], cols.divisors[t]
    principal = first_principal(j, loan, growth, divisor) + first_principal(j, service_fee, growth, divisor) \
        + cols.kavak_principals[t] + cols.insurance_principals[t]
    interest = first_interest(i, loan, plan.iva_factor) + first_interest(i, service_fee, plan.iva_factor) \
        + cols.kavak_interests[t] + cols.insurance_interests[t]
    return principal + interest + plan.gps_monthly + plan.gps_install


def classify(plan, delta):
    """Payment tier of a payment delta, or the reason it is not offered."""
    if delta < plan.tier_floor:
        return REJECT_DELTA_BELOW_FLOOR
    if delta <= plan.tier_refresh_max:
        return TIER_REFRESH
    if delta <= plan.tier_upgrade_max:
        return TIER_UPGRADE
    if delta <= plan.tier_ceiling:
        return TIER_MAX_UPGRADE
    return REJECT_DELTA_ABOVE_CEILING


def price_car(plan, price, car, out):
    """Price one car for every term of the plan into slot car * terms + t of `out`."""
    cols = plan.columns
    n_terms = len(cols.terms)
    service_fee = price * plan.service_fee_pct
    cxa = price * plan.cxa_pct
    equity = effective_equity(plan, plan.cac_bonus, cxa)
    loan = price - equity
    out.equity[car] = equity
    out.service_fee[car] = service_fee
    out.cxa[car] = cxa
    out.npv[car] = npv(plan, service_fee, cxa, plan.cac_bonus)
    out.financed[car] = loan + service_fee + plan.kavak_total + plan.insurance
    for t in range(n_terms):
        slot = car * n_terms + t
        out.payment[slot] = 0.0
        out.delta[slot] = 0.0
        if equity < price * cols.down_fractions[t]:
            out.status[slot] = REJECT_DOWN_PAYMENT_NOT_MET
        elif loan <= 0.0:
            out.status[slot] = REJECT_LOAN_NOT_POSITIVE
        else:
            payment = first_payment(plan, t, loan, service_fee)
            delta = payment / plan.current_payment - 1.0
            out.payment[slot] = payment
            out.delta[slot] = delta
            out.status[slot] = classify(plan, delta)


def price_offers(plan, prices, first, last, out):
    """Price cars [first, last). Returns -1, or the index of the first invalid price (nothing written)."""
    for car in range(first, last):
        if not is_valid_price(prices[car]):
            return car
    for car in range(first, last):
        price_car(plan, prices[car], car, out)
    return -1


def rank_offers(plan, out, n_cars, car_rank, tier_mask, limit=0):
    """Slots of the offers whose tier bit is set in `tier_mask`, in SPEC §3 order (tier, npv
    desc, payment asc, car rank, term), the `limit` best only when > 0, and the counts of all:
    [-, refresh, upgrade, max upgrade, then the four rejection reasons by -code + 3]."""
    n_terms = len(plan.columns.terms)
    counts = array("l", [0] * 8)
    keys = []
    for slot in range(n_cars * n_terms):
        status = out.status[slot]
        if status > 0:
            counts[status] += 1
            if tier_mask & (1 << status):
                car = slot // n_terms
                keys.append((status, -out.npv[car], out.payment[slot], car_rank[car], slot % n_terms, slot))
        else:
            counts[3 - status] += 1
    keys = heapq.nsmallest(limit, keys) if 0 < limit < len(keys) else sorted(keys)  # keys are distinct (slot)
    return array("l", [key[-1] for key in keys]), counts


# --- SPEC §3: amortization schedule -----------------------------------------------------------
def amortization(plan, term_index, price):
    """The schedule of one offer: len(SCHEDULE_COLUMNS) values per month, row after row. Each
    component's principal and interest of period p are numpy-financial's (plan.components)."""
    cols = plan.columns
    n = cols.terms[term_index]
    i, j = cols.monthly_rates[term_index], cols.monthly_rates_iva[term_index]
    service_fee = price * plan.service_fee_pct
    loan = price - effective_equity(plan, plan.cac_bonus, price * plan.cxa_pct)
    ins, ins_n, iva, iva_factor = plan.insurance, plan.insurance_months, plan.iva_rate, plan.iva_factor
    top = max(n, ins_n)
    powers_j, powers_i = growth_powers(j, top), growth_powers(i, top)
    amounts = (loan, service_fee, plan.kavak_total, ins)
    balances = [loan, service_fee, plan.kavak_total, ins]
    rows = array("d")
    for p in range(1, n + 1):
        q = (p - 1) % ins_n + 1  # insurance restarts every insurance term
        if q == 1:
            balances[3] = ins
        start = balances[0] + balances[1] + balances[2] + balances[3]
        principal, interest = [0.0] * 4, [0.0] * 4
        for c in range(4):
            periods, elapsed = (n, p - 1) if c < 3 else (ins_n, q - 1)
            principal[c] = components(j, amounts[c], periods, elapsed, powers_j)[0]
            interest[c] = components(i, amounts[c], periods, elapsed, powers_i)[1]
        gps_install = plan.gps_install if p == 1 else 0.0
        principal_sum = principal[0] + principal[1] + principal[2] + principal[3]
        interest_sum = interest[0] + interest[1] + interest[2] + interest[3]
        payment = principal_sum + (interest[0] * iva_factor + interest[1] * iva_factor
                                   + interest[2] * iva_factor + interest[3] * iva_factor) \
            + plan.gps_monthly + gps_install
        for c in range(4):
            balances[c] = max(0.0, balances[c] - principal[c])
        rows.extend((p, start, principal_sum + gps_install, interest_sum, plan.gps_monthly_net,
                     (interest_sum + plan.gps_monthly_net) * iva, payment,
                     balances[0], balances[1], balances[2], balances[3],
                     balances[0] + balances[1] + balances[2] + balances[3]))
    assert len(rows) == n * len(SCHEDULE_COLUMNS)
    return rows


# --- SPEC §3: minimum-subsidy search ----------------------------------------------------------
def failed_gate(splan, delta, npv_value, financed, price):
    """The first gate a priced combination fails, in the spec's order, or SUBSIDY_VIABLE."""
    if delta > splan.max_payment_delta:
        return SUBSIDY_PAYMENT_DELTA_TOO_HIGH
    if npv_value < splan.min_npv:
        return SUBSIDY_NPV_BELOW_MINIMUM
    if financed / price > splan.max_loan_to_value:
        return SUBSIDY_LTV_TOO_HIGH
    return SUBSIDY_VIABLE


def subsidy_search_car(splan, price):
    """(status, term, sf_pct, cac, cxa_pct, payment, delta, npv, financed, iterations) for one car:
    the first combination passing every gate, else the priced one with the smallest |delta|."""
    plan = splan.offer
    cols = plan.columns
    tried = 0
    best = None
    for t in range(len(cols.terms)):
        for sf_pct in splan.service_fee_values:
            for cac in splan.cac_values:
                for cxa_pct in splan.cxa_values:
                    tried += 1
                    service_fee = price * sf_pct
                    cxa = price * cxa_pct
                    equity = effective_equity(plan, cac, cxa)
                    if equity < price * cols.down_fractions[t]:
                        continue
                    loan = price - equity
                    if loan <= 0.0:
                        continue
                    financed = loan + service_fee + plan.kavak_total + plan.insurance
                    payment = first_payment(plan, t, loan, service_fee)
                    delta = payment / plan.current_payment - 1.0
                    margin = npv(plan, service_fee, cxa, cac)
                    gate = failed_gate(splan, delta, margin, financed, price)
                    attempt = [gate, cols.terms[t], sf_pct, cac, cxa_pct, payment, delta, margin, financed]
                    if gate == SUBSIDY_VIABLE:
                        return (*attempt, tried)
                    if best is None or abs(delta) < abs(best[6]):
                        best = attempt
    if best is None:
        return (SUBSIDY_DOWN_PAYMENT_NOT_MET, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, tried)
    return (*best, tried)


def subsidy_search(splan, prices, first, last, out):
    """Search cars [first, last) into `out`. Returns -1, or the index of the first invalid price."""
    for car in range(first, last):
        if not is_valid_price(prices[car]):
            return car
    for car in range(first, last):
        (out.status[car], out.term[car], out.service_fee_pct[car], out.cac_bonus[car], out.cxa_pct[car],
         out.payment[car], out.delta[car], out.npv[car], out.financed[car],
         out.iterations[car]) = subsidy_search_car(splan, prices[car])
    return -1


# --- protobuf wire encoding of ranked offers ----------------------------------------------------
from . import wire_py  # noqa: E402

encode_offers = wire_py.encode_offers  # both kernels expose it
