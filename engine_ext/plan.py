"""Per-request preparation shared by both kernels, and the audited payment arithmetic.

Everything that depends on the customer and the parameters but not on the car is computed
here once per request, in plain Python: the term-adjusted rates, the down-payment fractions,
the growth factors (1 + j) ** n (the only powers of offer pricing) and the payment components
of the fixed amounts (Kavak Total, insurance). Both kernels then run the same per-car
arithmetic in the same order, so they agree to the last bit.

The audited engine evaluates the payment component by component with numpy-financial's
`ppmt`/`ipmt` (PV passed negative, absolute value taken; SPEC §3 "Floating point"). The
functions below are those formulas, operation for operation, so every float64 rounding is
the same. The powers are not numpy's: SPEC §3 pins each one to the correctly rounded value of
the exact power (`growth_factor`).
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from functools import lru_cache

from .errors import EngineInputError
from .params import MIN_RATE, CustomerTerms, PricingParams


# SPEC §3 "Floating point": every growth factor is the correctly rounded value of the exact power,
# on every CPU. numpy's `power` (a vector library on AVX-512 CPUs) and libm's `pow` miss the last
# bit now and then, and a near tie (the subsidy search's fee splits, a gate, a tier boundary) could
# then be decided differently on two replicas. So the power is taken exactly, in integers, and
# rounded once. Rates and terms are few: each value is computed once (a few microseconds) and then
# read from a bounded cache (functools': in C, a hit costs less than numpy's call did).
@lru_cache(maxsize=32_768)
def growth_factor(rate: float, periods: int) -> float:
    """(1 + rate) ** periods, correctly rounded: the exact power of the float 1 + rate = m / 2**k is
    m**periods / 2**(k * periods). Its top 64 bits are rounded to odd (the lowest bit set when
    anything below was dropped), so the one rounding to 53 bits in float() is the correct one."""
    mantissa, scale = (1.0 + rate).as_integer_ratio()
    power = mantissa ** periods
    shift = max(power.bit_length() - 64, 0)
    top = power >> shift
    top |= (top << shift) != power
    return math.ldexp(top, shift - periods * (scale.bit_length() - 1))


def growth_powers(rate: float, top: int) -> list[float]:
    """growth_factor(rate, k) for k = 0 .. top: every power an amortization schedule uses."""
    return [growth_factor(rate, k) for k in range(top + 1)]


def annuity_divisor(rate: float, periods: int, growth: float) -> float:
    """numpy-financial's `fact` with payments at period end: (growth - 1) / rate, or periods at rate 0."""
    return float(periods) if rate == 0.0 else (growth - 1.0) / rate


def components(rate: float, amount: float, periods: int, elapsed: int, powers) -> tuple[float, float]:
    """(|PPMT|, |IPMT|) of period elapsed + 1 of `amount` over `periods` at `rate`, as numpy-financial
    computes them with pv = -amount; powers[k] = (1 + rate) ** k. The level payment is
    -(0 + pv * growth) / divisor, the balance after `elapsed` payments is
    fv = -(pv * elapsed_growth + payment * elapsed_divisor), and the interest is fv * rate."""
    growth, elapsed_growth = powers[periods], powers[elapsed]
    payment = amount * growth / annuity_divisor(rate, periods, growth)
    interest = -(-amount * elapsed_growth + payment * annuity_divisor(rate, elapsed, elapsed_growth)) * rate
    return abs(payment - interest), abs(interest)


def first_principal(rate: float, amount: float, growth: float, divisor: float) -> float:
    """|PPMT(rate, 1, n, -amount)|: `components` at elapsed 0, where the balance is the amount
    itself bit for bit, so the interest is amount * rate."""
    return abs(amount * growth / divisor - amount * rate)


def first_interest(rate: float, amount: float, iva_factor: float) -> float:
    """|IPMT(rate, 1, n, -amount)| * (1 + IVA): the first month's interest is amount * rate."""
    return abs(amount * rate) * iva_factor


@dataclass(frozen=True)
class TermColumns:
    """One entry per term, in the order given."""
    terms: array            # 'l': months
    annual_rates: array     # 'd': contractual annual rate after the term adjustment
    monthly_rates: array    # 'd': i = r / 12
    monthly_rates_iva: array  # 'd': j = r (1 + IVA) / 12
    down_fractions: array   # 'd': required down payment as a fraction of the price
    growths: array          # 'd': (1 + j) ** n
    divisors: array         # 'd': annuity_divisor(j, n, growth)
    kavak_principals: array   # 'd': first-month |PPMT| of Kavak Total
    kavak_interests: array    # 'd': first-month |IPMT| of Kavak Total, IVA included
    insurance_principals: array  # 'd': first-month |PPMT| of the insurance over its own term
    insurance_interests: array   # 'd': first-month |IPMT| of the insurance, IVA included


@dataclass(frozen=True)
class OfferPlan:
    """Everything the kernels need to price one customer's cars. Money in MXN."""
    columns: TermColumns
    vehicle_equity: float
    current_payment: float
    service_fee_pct: float
    cxa_pct: float
    cac_bonus: float
    kavak_total: float
    insurance: float
    insurance_months: int
    gps_install: float      # G0, IVA included when the fees carry IVA
    gps_monthly: float      # G1, idem
    gps_monthly_net: float  # the `cargos` column: GPS monthly fee before IVA
    iva_rate: float
    iva_factor: float       # 1 + IVA, applied to each interest component
    npv_deduction: float
    tier_floor: float
    tier_refresh_max: float
    tier_upgrade_max: float
    tier_ceiling: float


@dataclass(frozen=True)
class SubsidyPlan:
    """The offer plan over the subsidy term order, plus the grid and the gates."""
    offer: OfferPlan
    service_fee_values: array  # 'd', tried in this order
    cac_values: array          # 'd'
    cxa_values: array          # 'd'
    max_payment_delta: float
    min_npv: float
    max_loan_to_value: float


def term_columns(customer: CustomerTerms, params: PricingParams, terms: tuple[int, ...],
                 kavak_total: float) -> TermColumns:
    """The columns of a customer's rate and down-payment row: computed once per parameters
    (a settings version, or one set of overrides) and read by every call after."""
    base_rate = params.annual_rate(customer.risk_profile_name)
    return params.derived(("term columns", base_rate, customer.risk_profile_index, tuple(terms), kavak_total),
                          lambda: _term_columns(params, base_rate, customer.risk_profile_index, terms, kavak_total))


def _term_columns(params: PricingParams, base_rate: float, down_row_index: int, terms: tuple[int, ...],
                  kavak_total: float) -> TermColumns:
    down_row = params.down_payment_rows[down_row_index]
    insurance, ins_months = params.fees.insurance_amount, params.fees.insurance_term_months
    iva_factor = 1.0 + params.iva_rate
    rates = [base_rate + params.term_rate_adjustments.get(n, 0.0) for n in terms]
    for n, rate in zip(terms, rates):
        if not (rate == 0.0 or MIN_RATE <= rate <= 1.0):
            raise EngineInputError("interest_rate", f"the {n}-month rate after its term adjustment is {rate}; "
                                                    f"it must be 0 or within [{MIN_RATE}, 1]")
    monthly = [r / 12.0 for r in rates]
    monthly_iva = [r * iva_factor / 12.0 for r in rates]
    growths, divisors, kt_p, kt_i, ins_p, ins_i = [], [], [], [], [], []
    for n, i, j in zip(terms, monthly, monthly_iva):
        growth, ins_growth = growth_factor(j, n), growth_factor(j, ins_months)
        divisor, ins_divisor = annuity_divisor(j, n, growth), annuity_divisor(j, ins_months, ins_growth)
        growths.append(growth)
        divisors.append(divisor)
        kt_p.append(first_principal(j, kavak_total, growth, divisor))
        kt_i.append(first_interest(i, kavak_total, iva_factor))
        ins_p.append(first_principal(j, insurance, ins_growth, ins_divisor))
        ins_i.append(first_interest(i, insurance, iva_factor))
    return TermColumns(
        terms=array("l", terms),
        annual_rates=array("d", rates),
        monthly_rates=array("d", monthly),
        monthly_rates_iva=array("d", monthly_iva),
        down_fractions=array("d", [down_row[params.down_payment_column(n)] for n in terms]),
        growths=array("d", growths),
        divisors=array("d", divisors),
        kavak_principals=array("d", kt_p),
        kavak_interests=array("d", kt_i),
        insurance_principals=array("d", ins_p),
        insurance_interests=array("d", ins_i),
    )


def build_offer_plan(customer: CustomerTerms, params: PricingParams,
                     terms: tuple[int, ...] | None = None, kavak_total: float | None = None) -> OfferPlan:
    """Plan for `terms` (default: the parameters' terms, ascending)."""
    if customer.risk_profile_index >= len(params.down_payment_rows):
        raise EngineInputError("risk_profile_index", f"must be < {len(params.down_payment_rows)} "
                                                     f"(rows of the down-payment table), got {customer.risk_profile_index}")
    fees, tiers = params.fees, params.tiers
    gps_factor = 1.0 + params.iva_rate if fees.gps_fees_include_iva else 1.0
    kavak_total = fees.kavak_total_amount if kavak_total is None else kavak_total
    return OfferPlan(
        columns=term_columns(customer, params, params.terms if terms is None else terms, kavak_total),
        vehicle_equity=customer.vehicle_equity,
        current_payment=customer.current_monthly_payment,
        service_fee_pct=fees.service_fee_pct,
        cxa_pct=fees.cxa_pct,
        cac_bonus=fees.cac_bonus,
        kavak_total=kavak_total,
        insurance=fees.insurance_amount,
        insurance_months=fees.insurance_term_months,
        gps_install=fees.gps_installation_fee * gps_factor,
        gps_monthly=fees.gps_monthly_fee * gps_factor,
        gps_monthly_net=fees.gps_monthly_fee,
        iva_rate=params.iva_rate,
        iva_factor=1.0 + params.iva_rate,
        npv_deduction=params.npv_base_margin_deduction,
        tier_floor=tiers.floor,
        tier_refresh_max=tiers.refresh_max,
        tier_upgrade_max=tiers.upgrade_max,
        tier_ceiling=tiers.ceiling,
    )


def build_subsidy_plan(customer: CustomerTerms, params: PricingParams) -> SubsidyPlan:
    grid = params.subsidy
    service_fees, cacs, cxas = params.derived(("subsidy grid",), lambda: (
        array("d", grid.service_fee_values()), array("d", grid.cac_values()), array("d", grid.cxa_values())))
    return SubsidyPlan(
        offer=build_offer_plan(customer, params, grid.term_order,
                               kavak_total=grid.kavak_total_amount if grid.kavak_total_enabled else 0.0),
        service_fee_values=service_fees,
        cac_values=cacs,
        cxa_values=cxas,
        max_payment_delta=grid.max_payment_delta,
        min_npv=grid.min_npv,
        max_loan_to_value=grid.max_loan_to_value,
    )
