"""Per-request preparation shared by both kernels.

Everything that depends on the customer and the parameters but not on the car is computed
here once per request, in plain Python: the term-adjusted rates, the down-payment fractions
and the annuity factors (the only `pow` calls of offer pricing). Both kernels then run the
same per-car arithmetic in the same order, so they agree to the last bit.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

from .errors import EngineInputError
from .params import MIN_RATE, CustomerTerms, PricingParams


def annuity_factor(rate: float, periods: int) -> float:
    """PMT(rate, periods, 1): the level payment per unit of present value (spreadsheet PMT, PV positive)."""
    if rate == 0.0:
        return 1.0 / periods
    growth = (1.0 + rate) ** periods
    return growth * rate / (growth - 1.0)


@dataclass(frozen=True)
class TermColumns:
    """One entry per term, in the order given."""
    terms: array            # 'l': months
    annual_rates: array     # 'd': contractual annual rate after the term adjustment
    monthly_rates: array    # 'd': i = r / 12
    monthly_rates_iva: array  # 'd': j = r (1 + IVA) / 12
    down_fractions: array   # 'd': required down payment as a fraction of the price
    main_factors: array     # 'd': PMT(j, n, 1)
    insurance_factors: array  # 'd': PMT(j, insurance term, 1)


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


def term_columns(customer: CustomerTerms, params: PricingParams, terms: tuple[int, ...]) -> TermColumns:
    base_rate = params.annual_rate(customer.risk_profile_name)
    down_row = params.down_payment_rows[customer.risk_profile_index]
    ins_months = params.fees.insurance_term_months
    rates = [base_rate + params.term_rate_adjustments.get(n, 0.0) for n in terms]
    for n, rate in zip(terms, rates):
        if not (rate == 0.0 or MIN_RATE <= rate <= 1.0):
            raise EngineInputError("interest_rate", f"the {n}-month rate after its term adjustment is {rate}; "
                                                    f"it must be 0 or within [{MIN_RATE}, 1]")
    monthly_iva = [r * (1.0 + params.iva_rate) / 12.0 for r in rates]
    return TermColumns(
        terms=array("l", terms),
        annual_rates=array("d", rates),
        monthly_rates=array("d", [r / 12.0 for r in rates]),
        monthly_rates_iva=array("d", monthly_iva),
        down_fractions=array("d", [down_row[params.down_payment_column(n)] for n in terms]),
        main_factors=array("d", [annuity_factor(j, n) for j, n in zip(monthly_iva, terms)]),
        insurance_factors=array("d", [annuity_factor(j, ins_months) for j in monthly_iva]),
    )


def build_offer_plan(customer: CustomerTerms, params: PricingParams,
                     terms: tuple[int, ...] | None = None, kavak_total: float | None = None) -> OfferPlan:
    """Plan for `terms` (default: the parameters' terms, ascending)."""
    if customer.risk_profile_index >= len(params.down_payment_rows):
        raise EngineInputError("risk_profile_index", f"must be < {len(params.down_payment_rows)} "
                                                     f"(rows of the down-payment table), got {customer.risk_profile_index}")
    fees, tiers = params.fees, params.tiers
    iva_factor = 1.0 + params.iva_rate if fees.gps_fees_include_iva else 1.0
    return OfferPlan(
        columns=term_columns(customer, params, params.terms if terms is None else terms),
        vehicle_equity=customer.vehicle_equity,
        current_payment=customer.current_monthly_payment,
        service_fee_pct=fees.service_fee_pct,
        cxa_pct=fees.cxa_pct,
        cac_bonus=fees.cac_bonus,
        kavak_total=fees.kavak_total_amount if kavak_total is None else kavak_total,
        insurance=fees.insurance_amount,
        insurance_months=fees.insurance_term_months,
        gps_install=fees.gps_installation_fee * iva_factor,
        gps_monthly=fees.gps_monthly_fee * iva_factor,
        gps_monthly_net=fees.gps_monthly_fee,
        iva_rate=params.iva_rate,
        npv_deduction=params.npv_base_margin_deduction,
        tier_floor=tiers.floor,
        tier_refresh_max=tiers.refresh_max,
        tier_upgrade_max=tiers.upgrade_max,
        tier_ceiling=tiers.ceiling,
    )


def build_subsidy_plan(customer: CustomerTerms, params: PricingParams) -> SubsidyPlan:
    grid = params.subsidy
    return SubsidyPlan(
        offer=build_offer_plan(customer, params, grid.term_order,
                               kavak_total=grid.kavak_total_amount if grid.kavak_total_enabled else 0.0),
        service_fee_values=array("d", grid.service_fee_values()),
        cac_values=array("d", grid.cac_values()),
        cxa_values=array("d", grid.cxa_values()),
        max_payment_delta=grid.max_payment_delta,
        min_npv=grid.min_npv,
        max_loan_to_value=grid.max_loan_to_value,
    )
