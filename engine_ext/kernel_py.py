"""The pure-Python kernel: the executable specification of SPEC §2-§3, one function per rule.

`_kernel.pyx` implements the same five entry points with the same arithmetic in the same
order, so the two agree to the last bit (tests check this on the golden vectors and on
random inputs). Inputs are validated before they get here (`params.py`, `engine.py`),
except the car prices, which each kernel checks itself.
"""
from __future__ import annotations

import math
from array import array

from .constants import (
    REJECT_DELTA_ABOVE_CEILING, REJECT_DELTA_BELOW_FLOOR, REJECT_DOWN_PAYMENT_NOT_MET,
    REJECT_LOAN_NOT_POSITIVE, SCHEDULE_COLUMNS, SUBSIDY_DOWN_PAYMENT_NOT_MET, SUBSIDY_LTV_TOO_HIGH,
    SUBSIDY_NPV_BELOW_MINIMUM, SUBSIDY_PAYMENT_DELTA_TOO_HIGH, SUBSIDY_VIABLE, TIER_MAX_UPGRADE,
    TIER_REFRESH, TIER_UPGRADE,
)

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


def first_payment(plan, loan, service_fee, kavak_total, main_factor, insurance_factor):
    """PMT(j, n, L+SF+KT) + PMT(j, 12, INS) + G1 + G0 (= the PPMT/IPMT component sum of period 1)."""
    return (loan + service_fee + kavak_total) * main_factor + plan.insurance * insurance_factor \
        + plan.gps_monthly + plan.gps_install


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
            payment = first_payment(plan, loan, service_fee, plan.kavak_total,
                                    cols.main_factors[t], cols.insurance_factors[t])
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


def rank_offers(plan, out, n_cars, car_rank, tier_mask):
    """Slots of the offers whose tier bit is set in `tier_mask`, in SPEC §3 order (tier, npv
    desc, payment asc, car rank, term), and counts: [-, refresh, upgrade, max upgrade, then the
    four rejection reasons by -code + 3]."""
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
    keys.sort()
    return array("l", [key[-1] for key in keys]), counts


# --- SPEC §3: amortization schedule -----------------------------------------------------------
def remaining_balance(rate, period, periods, amount):
    """Balance of a level-payment loan after period - 1 payments."""
    if rate == 0.0:
        return amount - amount / periods * (period - 1)
    growth = (1.0 + rate) ** (period - 1)
    payment = amount * ((1.0 + rate) ** periods * rate / ((1.0 + rate) ** periods - 1.0))
    return amount * growth - payment * (growth - 1.0) / rate


def ipmt(rate, period, periods, amount):
    """Spreadsheet IPMT with PV positive: interest of `period`."""
    return remaining_balance(rate, period, periods, amount) * rate


def ppmt(rate, period, periods, amount):
    """Spreadsheet PPMT with PV positive: principal of `period`."""
    if rate == 0.0:
        return amount / periods
    growth = (1.0 + rate) ** periods
    return amount * (growth * rate / (growth - 1.0)) - ipmt(rate, period, periods, amount)


def amortization(plan, term_index, price):
    """The schedule of one offer: len(SCHEDULE_COLUMNS) values per month, row after row."""
    cols = plan.columns
    n = cols.terms[term_index]
    i, j = cols.monthly_rates[term_index], cols.monthly_rates_iva[term_index]
    service_fee = price * plan.service_fee_pct
    loan = price - effective_equity(plan, plan.cac_bonus, price * plan.cxa_pct)
    ins, ins_n, iva = plan.insurance, plan.insurance_months, plan.iva_rate
    amounts = (loan, service_fee, plan.kavak_total)
    balances = [loan, service_fee, plan.kavak_total, ins]
    rows = array("d")
    for p in range(1, n + 1):
        q = (p - 1) % ins_n + 1  # insurance restarts every insurance term
        if q == 1:
            balances[3] = ins
        start = balances[0] + balances[1] + balances[2] + balances[3]
        principal = [ppmt(j, p, n, x) for x in amounts] + [ppmt(j, q, ins_n, ins)]
        interest = [ipmt(i, p, n, x) for x in amounts] + [ipmt(i, q, ins_n, ins)]
        gps_install = plan.gps_install if p == 1 else 0.0
        principal_sum = principal[0] + principal[1] + principal[2] + principal[3]
        interest_sum = interest[0] + interest[1] + interest[2] + interest[3]
        payment = principal_sum + (interest[0] * (1.0 + iva) + interest[1] * (1.0 + iva)
                                   + interest[2] * (1.0 + iva) + interest[3] * (1.0 + iva)) \
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
                    payment = first_payment(plan, loan, service_fee, plan.kavak_total,
                                            cols.main_factors[t], cols.insurance_factors[t])
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
