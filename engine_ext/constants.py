"""Codes shared by both kernels and the engine (plain Python, imported by the Cython module too)."""

# Offer status per (car, term) slot: a tier (> 0) or a rejection reason (< 0).
TIER_REFRESH = 1
TIER_UPGRADE = 2
TIER_MAX_UPGRADE = 3
TIER_NAMES = {TIER_REFRESH: "Refresh", TIER_UPGRADE: "Upgrade", TIER_MAX_UPGRADE: "Max Upgrade"}
ALL_TIERS = (TIER_REFRESH, TIER_UPGRADE, TIER_MAX_UPGRADE)

REJECT_DOWN_PAYMENT_NOT_MET = -1
REJECT_LOAN_NOT_POSITIVE = -2
REJECT_DELTA_BELOW_FLOOR = -3
REJECT_DELTA_ABOVE_CEILING = -4
REJECT_NAMES = {
    REJECT_DOWN_PAYMENT_NOT_MET: "down_payment_not_met",
    REJECT_LOAN_NOT_POSITIVE: "loan_not_positive",
    REJECT_DELTA_BELOW_FLOOR: "delta_below_floor",
    REJECT_DELTA_ABOVE_CEILING: "delta_above_ceiling",
}

# Minimum-subsidy outcome per car.
SUBSIDY_VIABLE = 0
SUBSIDY_PAYMENT_DELTA_TOO_HIGH = 1
SUBSIDY_NPV_BELOW_MINIMUM = 2
SUBSIDY_LTV_TOO_HIGH = 3
SUBSIDY_DOWN_PAYMENT_NOT_MET = 4
SUBSIDY_REASONS = {
    SUBSIDY_VIABLE: None,
    SUBSIDY_PAYMENT_DELTA_TOO_HIGH: "Payment_Delta_Too_High",
    SUBSIDY_NPV_BELOW_MINIMUM: "NPV_Below_Minimum",
    SUBSIDY_LTV_TOO_HIGH: "LTV_Too_High",
    SUBSIDY_DOWN_PAYMENT_NOT_MET: "Down_Payment_Not_Met",
}

# Amortization schedule: one row of these columns per month (the lender's spreadsheet columns
# first, then each component's ending balance). Money in MXN.
SCHEDULE_COLUMNS = (
    "cuota", "saldo_insoluto", "capital", "interes", "cargos", "iva", "exigible",
    "end_balance_main", "end_balance_service_fee", "end_balance_kavak_total",
    "end_balance_insurance", "end_balance_total",
)
