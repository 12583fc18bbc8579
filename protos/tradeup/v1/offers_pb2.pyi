from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_REFRESH: _ClassVar[Tier]
    TIER_UPGRADE: _ClassVar[Tier]
    TIER_MAX_UPGRADE: _ClassVar[Tier]

class SubsidyOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBSIDY_OUTCOME_UNSPECIFIED: _ClassVar[SubsidyOutcome]
    SUBSIDY_OUTCOME_VIABLE: _ClassVar[SubsidyOutcome]
    SUBSIDY_OUTCOME_PAYMENT_DELTA_TOO_HIGH: _ClassVar[SubsidyOutcome]
    SUBSIDY_OUTCOME_NPV_BELOW_MINIMUM: _ClassVar[SubsidyOutcome]
    SUBSIDY_OUTCOME_LTV_TOO_HIGH: _ClassVar[SubsidyOutcome]
    SUBSIDY_OUTCOME_DOWN_PAYMENT_NOT_MET: _ClassVar[SubsidyOutcome]

class WatchReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_REASON_UNSPECIFIED: _ClassVar[WatchReason]
    WATCH_REASON_INITIAL: _ClassVar[WatchReason]
    WATCH_REASON_INVENTORY: _ClassVar[WatchReason]
    WATCH_REASON_CONFIGURATION: _ClassVar[WatchReason]
    WATCH_REASON_CUSTOMER: _ClassVar[WatchReason]
    WATCH_REASON_RESYNC: _ClassVar[WatchReason]
    WATCH_REASON_ENDING: _ClassVar[WatchReason]
TIER_UNSPECIFIED: Tier
TIER_REFRESH: Tier
TIER_UPGRADE: Tier
TIER_MAX_UPGRADE: Tier
SUBSIDY_OUTCOME_UNSPECIFIED: SubsidyOutcome
SUBSIDY_OUTCOME_VIABLE: SubsidyOutcome
SUBSIDY_OUTCOME_PAYMENT_DELTA_TOO_HIGH: SubsidyOutcome
SUBSIDY_OUTCOME_NPV_BELOW_MINIMUM: SubsidyOutcome
SUBSIDY_OUTCOME_LTV_TOO_HIGH: SubsidyOutcome
SUBSIDY_OUTCOME_DOWN_PAYMENT_NOT_MET: SubsidyOutcome
WATCH_REASON_UNSPECIFIED: WatchReason
WATCH_REASON_INITIAL: WatchReason
WATCH_REASON_INVENTORY: WatchReason
WATCH_REASON_CONFIGURATION: WatchReason
WATCH_REASON_CUSTOMER: WatchReason
WATCH_REASON_RESYNC: WatchReason
WATCH_REASON_ENDING: WatchReason

class CustomerProfile(_message.Message):
    __slots__ = ("customer_id", "current_monthly_payment", "outstanding_balance", "current_car_price", "current_car_year", "current_car_km", "risk_profile_name", "risk_profile_index", "region", "current_car_brand", "current_car_model")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MONTHLY_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_BALANCE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAR_PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAR_YEAR_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAR_KM_FIELD_NUMBER: _ClassVar[int]
    RISK_PROFILE_NAME_FIELD_NUMBER: _ClassVar[int]
    RISK_PROFILE_INDEX_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAR_BRAND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_CAR_MODEL_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    current_monthly_payment: float
    outstanding_balance: float
    current_car_price: float
    current_car_year: int
    current_car_km: int
    risk_profile_name: str
    risk_profile_index: int
    region: str
    current_car_brand: str
    current_car_model: str
    def __init__(self, customer_id: _Optional[str] = ..., current_monthly_payment: _Optional[float] = ..., outstanding_balance: _Optional[float] = ..., current_car_price: _Optional[float] = ..., current_car_year: _Optional[int] = ..., current_car_km: _Optional[int] = ..., risk_profile_name: _Optional[str] = ..., risk_profile_index: _Optional[int] = ..., region: _Optional[str] = ..., current_car_brand: _Optional[str] = ..., current_car_model: _Optional[str] = ...) -> None: ...

class PricingOverrides(_message.Message):
    __slots__ = ("service_fee_pct", "cxa_pct", "cac_bonus", "kavak_total_amount", "insurance_amount", "interest_rate")
    SERVICE_FEE_PCT_FIELD_NUMBER: _ClassVar[int]
    CXA_PCT_FIELD_NUMBER: _ClassVar[int]
    CAC_BONUS_FIELD_NUMBER: _ClassVar[int]
    KAVAK_TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RATE_FIELD_NUMBER: _ClassVar[int]
    service_fee_pct: float
    cxa_pct: float
    cac_bonus: float
    kavak_total_amount: float
    insurance_amount: float
    interest_rate: float
    def __init__(self, service_fee_pct: _Optional[float] = ..., cxa_pct: _Optional[float] = ..., cac_bonus: _Optional[float] = ..., kavak_total_amount: _Optional[float] = ..., insurance_amount: _Optional[float] = ..., interest_rate: _Optional[float] = ...) -> None: ...

class OfferOptions(_message.Message):
    __slots__ = ("terms", "tiers", "max_offers", "same_region", "max_cars")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    MAX_OFFERS_FIELD_NUMBER: _ClassVar[int]
    SAME_REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_CARS_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedScalarFieldContainer[int]
    tiers: _containers.RepeatedScalarFieldContainer[Tier]
    max_offers: int
    same_region: bool
    max_cars: int
    def __init__(self, terms: _Optional[_Iterable[int]] = ..., tiers: _Optional[_Iterable[_Union[Tier, str]]] = ..., max_offers: _Optional[int] = ..., same_region: _Optional[bool] = ..., max_cars: _Optional[int] = ...) -> None: ...

class ConsiderationFilters(_message.Message):
    __slots__ = ("price_min", "price_max", "max_price_vs_current", "brands", "exclude_brands", "same_brand_as_current", "other_brand_than_current", "year_min", "year_max", "km_max", "max_km_vs_current", "promotion_only", "regions", "colors")
    PRICE_MIN_FIELD_NUMBER: _ClassVar[int]
    PRICE_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_VS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_BRANDS_FIELD_NUMBER: _ClassVar[int]
    SAME_BRAND_AS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    OTHER_BRAND_THAN_CURRENT_FIELD_NUMBER: _ClassVar[int]
    YEAR_MIN_FIELD_NUMBER: _ClassVar[int]
    YEAR_MAX_FIELD_NUMBER: _ClassVar[int]
    KM_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_KM_VS_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_ONLY_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    COLORS_FIELD_NUMBER: _ClassVar[int]
    price_min: float
    price_max: float
    max_price_vs_current: float
    brands: _containers.RepeatedScalarFieldContainer[str]
    exclude_brands: _containers.RepeatedScalarFieldContainer[str]
    same_brand_as_current: bool
    other_brand_than_current: bool
    year_min: int
    year_max: int
    km_max: int
    max_km_vs_current: float
    promotion_only: bool
    regions: _containers.RepeatedScalarFieldContainer[str]
    colors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, price_min: _Optional[float] = ..., price_max: _Optional[float] = ..., max_price_vs_current: _Optional[float] = ..., brands: _Optional[_Iterable[str]] = ..., exclude_brands: _Optional[_Iterable[str]] = ..., same_brand_as_current: _Optional[bool] = ..., other_brand_than_current: _Optional[bool] = ..., year_min: _Optional[int] = ..., year_max: _Optional[int] = ..., km_max: _Optional[int] = ..., max_km_vs_current: _Optional[float] = ..., promotion_only: _Optional[bool] = ..., regions: _Optional[_Iterable[str]] = ..., colors: _Optional[_Iterable[str]] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("car_id", "term", "tier", "monthly_payment", "payment_delta", "loan_amount", "effective_equity", "service_fee_amount", "cxa_amount", "kavak_total_amount", "insurance_amount", "gps_install_fee", "gps_monthly_fee", "npv", "interest_rate")
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_DELTA_FIELD_NUMBER: _ClassVar[int]
    LOAN_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_EQUITY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FEE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CXA_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    KAVAK_TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INSURANCE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    GPS_INSTALL_FEE_FIELD_NUMBER: _ClassVar[int]
    GPS_MONTHLY_FEE_FIELD_NUMBER: _ClassVar[int]
    NPV_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RATE_FIELD_NUMBER: _ClassVar[int]
    car_id: str
    term: int
    tier: Tier
    monthly_payment: float
    payment_delta: float
    loan_amount: float
    effective_equity: float
    service_fee_amount: float
    cxa_amount: float
    kavak_total_amount: float
    insurance_amount: float
    gps_install_fee: float
    gps_monthly_fee: float
    npv: float
    interest_rate: float
    def __init__(self, car_id: _Optional[str] = ..., term: _Optional[int] = ..., tier: _Optional[_Union[Tier, str]] = ..., monthly_payment: _Optional[float] = ..., payment_delta: _Optional[float] = ..., loan_amount: _Optional[float] = ..., effective_equity: _Optional[float] = ..., service_fee_amount: _Optional[float] = ..., cxa_amount: _Optional[float] = ..., kavak_total_amount: _Optional[float] = ..., insurance_amount: _Optional[float] = ..., gps_install_fee: _Optional[float] = ..., gps_monthly_fee: _Optional[float] = ..., npv: _Optional[float] = ..., interest_rate: _Optional[float] = ...) -> None: ...

class RejectionCounts(_message.Message):
    __slots__ = ("down_payment_not_met", "loan_not_positive", "delta_below_floor", "delta_above_ceiling")
    DOWN_PAYMENT_NOT_MET_FIELD_NUMBER: _ClassVar[int]
    LOAN_NOT_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    DELTA_BELOW_FLOOR_FIELD_NUMBER: _ClassVar[int]
    DELTA_ABOVE_CEILING_FIELD_NUMBER: _ClassVar[int]
    down_payment_not_met: int
    loan_not_positive: int
    delta_below_floor: int
    delta_above_ceiling: int
    def __init__(self, down_payment_not_met: _Optional[int] = ..., loan_not_positive: _Optional[int] = ..., delta_below_floor: _Optional[int] = ..., delta_above_ceiling: _Optional[int] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("database_ms", "engine_ms", "total_ms")
    DATABASE_MS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    database_ms: float
    engine_ms: float
    total_ms: float
    def __init__(self, database_ms: _Optional[float] = ..., engine_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class OfferSummary(_message.Message):
    __slots__ = ("customer_id", "cars_evaluated", "total_offers", "refresh_count", "upgrade_count", "max_upgrade_count", "rejected", "timing", "config_version", "inventory_version")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CARS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_OFFERS_FIELD_NUMBER: _ClassVar[int]
    REFRESH_COUNT_FIELD_NUMBER: _ClassVar[int]
    UPGRADE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_UPGRADE_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    cars_evaluated: int
    total_offers: int
    refresh_count: int
    upgrade_count: int
    max_upgrade_count: int
    rejected: RejectionCounts
    timing: Timing
    config_version: int
    inventory_version: int
    def __init__(self, customer_id: _Optional[str] = ..., cars_evaluated: _Optional[int] = ..., total_offers: _Optional[int] = ..., refresh_count: _Optional[int] = ..., upgrade_count: _Optional[int] = ..., max_upgrade_count: _Optional[int] = ..., rejected: _Optional[_Union[RejectionCounts, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., config_version: _Optional[int] = ..., inventory_version: _Optional[int] = ...) -> None: ...

class TierGroup(_message.Message):
    __slots__ = ("tier", "count", "offers")
    TIER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    count: int
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., count: _Optional[int] = ..., offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ...) -> None: ...

class StreamOffersRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "overrides", "options", "filters")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    overrides: PricingOverrides
    options: OfferOptions
    filters: ConsiderationFilters
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ..., options: _Optional[_Union[OfferOptions, _Mapping]] = ..., filters: _Optional[_Union[ConsiderationFilters, _Mapping]] = ...) -> None: ...

class StreamOffersResponse(_message.Message):
    __slots__ = ("offers", "summary")
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    offers: _containers.RepeatedCompositeFieldContainer[Offer]
    summary: OfferSummary
    def __init__(self, offers: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ..., summary: _Optional[_Union[OfferSummary, _Mapping]] = ...) -> None: ...

class GenerateOffersRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "overrides", "options", "filters")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    overrides: PricingOverrides
    options: OfferOptions
    filters: ConsiderationFilters
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ..., options: _Optional[_Union[OfferOptions, _Mapping]] = ..., filters: _Optional[_Union[ConsiderationFilters, _Mapping]] = ...) -> None: ...

class GenerateOffersResponse(_message.Message):
    __slots__ = ("summary", "groups")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    summary: OfferSummary
    groups: _containers.RepeatedCompositeFieldContainer[TierGroup]
    def __init__(self, summary: _Optional[_Union[OfferSummary, _Mapping]] = ..., groups: _Optional[_Iterable[_Union[TierGroup, _Mapping]]] = ...) -> None: ...

class GenerateOffersBulkRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "overrides", "options", "filters")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    overrides: PricingOverrides
    options: OfferOptions
    filters: ConsiderationFilters
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ..., options: _Optional[_Union[OfferOptions, _Mapping]] = ..., filters: _Optional[_Union[ConsiderationFilters, _Mapping]] = ...) -> None: ...

class CustomerError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GenerateOffersBulkResponse(_message.Message):
    __slots__ = ("index", "customer_id", "offers", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    customer_id: str
    offers: GenerateOffersResponse
    error: CustomerError
    def __init__(self, index: _Optional[int] = ..., customer_id: _Optional[str] = ..., offers: _Optional[_Union[GenerateOffersResponse, _Mapping]] = ..., error: _Optional[_Union[CustomerError, _Mapping]] = ...) -> None: ...

class SubsidyResult(_message.Message):
    __slots__ = ("car_id", "viable", "outcome", "term", "service_fee_pct", "cac_bonus", "cxa_pct", "monthly_payment", "payment_delta", "npv", "loan_amount", "iterations_tried")
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    VIABLE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FEE_PCT_FIELD_NUMBER: _ClassVar[int]
    CAC_BONUS_FIELD_NUMBER: _ClassVar[int]
    CXA_PCT_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_DELTA_FIELD_NUMBER: _ClassVar[int]
    NPV_FIELD_NUMBER: _ClassVar[int]
    LOAN_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_TRIED_FIELD_NUMBER: _ClassVar[int]
    car_id: str
    viable: bool
    outcome: SubsidyOutcome
    term: int
    service_fee_pct: float
    cac_bonus: float
    cxa_pct: float
    monthly_payment: float
    payment_delta: float
    npv: float
    loan_amount: float
    iterations_tried: int
    def __init__(self, car_id: _Optional[str] = ..., viable: _Optional[bool] = ..., outcome: _Optional[_Union[SubsidyOutcome, str]] = ..., term: _Optional[int] = ..., service_fee_pct: _Optional[float] = ..., cac_bonus: _Optional[float] = ..., cxa_pct: _Optional[float] = ..., monthly_payment: _Optional[float] = ..., payment_delta: _Optional[float] = ..., npv: _Optional[float] = ..., loan_amount: _Optional[float] = ..., iterations_tried: _Optional[int] = ...) -> None: ...

class FindMinimumSubsidyRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "car_ids", "overrides", "same_region", "max_cars", "filters", "grid", "max_viable")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CAR_IDS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    SAME_REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_CARS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    MAX_VIABLE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    car_ids: _containers.RepeatedScalarFieldContainer[str]
    overrides: PricingOverrides
    same_region: bool
    max_cars: int
    filters: ConsiderationFilters
    grid: SubsidySearchGrid
    max_viable: int
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., car_ids: _Optional[_Iterable[str]] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ..., same_region: _Optional[bool] = ..., max_cars: _Optional[int] = ..., filters: _Optional[_Union[ConsiderationFilters, _Mapping]] = ..., grid: _Optional[_Union[SubsidySearchGrid, _Mapping]] = ..., max_viable: _Optional[int] = ...) -> None: ...

class SubsidySearchGrid(_message.Message):
    __slots__ = ("service_fee_max", "service_fee_min", "service_fee_step", "cac_min", "cac_max", "cac_step", "cxa_max", "cxa_min", "cxa_step", "kavak_total_enabled", "kavak_total_amount")
    SERVICE_FEE_MAX_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FEE_MIN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FEE_STEP_FIELD_NUMBER: _ClassVar[int]
    CAC_MIN_FIELD_NUMBER: _ClassVar[int]
    CAC_MAX_FIELD_NUMBER: _ClassVar[int]
    CAC_STEP_FIELD_NUMBER: _ClassVar[int]
    CXA_MAX_FIELD_NUMBER: _ClassVar[int]
    CXA_MIN_FIELD_NUMBER: _ClassVar[int]
    CXA_STEP_FIELD_NUMBER: _ClassVar[int]
    KAVAK_TOTAL_ENABLED_FIELD_NUMBER: _ClassVar[int]
    KAVAK_TOTAL_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    service_fee_max: float
    service_fee_min: float
    service_fee_step: float
    cac_min: float
    cac_max: float
    cac_step: float
    cxa_max: float
    cxa_min: float
    cxa_step: float
    kavak_total_enabled: bool
    kavak_total_amount: float
    def __init__(self, service_fee_max: _Optional[float] = ..., service_fee_min: _Optional[float] = ..., service_fee_step: _Optional[float] = ..., cac_min: _Optional[float] = ..., cac_max: _Optional[float] = ..., cac_step: _Optional[float] = ..., cxa_max: _Optional[float] = ..., cxa_min: _Optional[float] = ..., cxa_step: _Optional[float] = ..., kavak_total_enabled: _Optional[bool] = ..., kavak_total_amount: _Optional[float] = ...) -> None: ...

class SubsidySummary(_message.Message):
    __slots__ = ("candidates", "searched", "viable", "iterations", "best_viable", "nearest_misses")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SEARCHED_FIELD_NUMBER: _ClassVar[int]
    VIABLE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    BEST_VIABLE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_MISSES_FIELD_NUMBER: _ClassVar[int]
    candidates: int
    searched: int
    viable: int
    iterations: int
    best_viable: _containers.RepeatedCompositeFieldContainer[SubsidyResult]
    nearest_misses: _containers.RepeatedCompositeFieldContainer[SubsidyResult]
    def __init__(self, candidates: _Optional[int] = ..., searched: _Optional[int] = ..., viable: _Optional[int] = ..., iterations: _Optional[int] = ..., best_viable: _Optional[_Iterable[_Union[SubsidyResult, _Mapping]]] = ..., nearest_misses: _Optional[_Iterable[_Union[SubsidyResult, _Mapping]]] = ...) -> None: ...

class FindMinimumSubsidyResponse(_message.Message):
    __slots__ = ("results", "viable_count", "cars_searched", "summary")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    VIABLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CARS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubsidyResult]
    viable_count: int
    cars_searched: int
    summary: SubsidySummary
    def __init__(self, results: _Optional[_Iterable[_Union[SubsidyResult, _Mapping]]] = ..., viable_count: _Optional[int] = ..., cars_searched: _Optional[int] = ..., summary: _Optional[_Union[SubsidySummary, _Mapping]] = ...) -> None: ...

class GetAmortizationTableRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "car_id", "term", "overrides")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    car_id: str
    term: int
    overrides: PricingOverrides
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., car_id: _Optional[str] = ..., term: _Optional[int] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ...) -> None: ...

class AmortizationRow(_message.Message):
    __slots__ = ("cuota", "saldo_insoluto", "capital", "interes", "cargos", "iva", "exigible", "end_balance_main", "end_balance_service_fee", "end_balance_kavak_total", "end_balance_insurance", "end_balance_total")
    CUOTA_FIELD_NUMBER: _ClassVar[int]
    SALDO_INSOLUTO_FIELD_NUMBER: _ClassVar[int]
    CAPITAL_FIELD_NUMBER: _ClassVar[int]
    INTERES_FIELD_NUMBER: _ClassVar[int]
    CARGOS_FIELD_NUMBER: _ClassVar[int]
    IVA_FIELD_NUMBER: _ClassVar[int]
    EXIGIBLE_FIELD_NUMBER: _ClassVar[int]
    END_BALANCE_MAIN_FIELD_NUMBER: _ClassVar[int]
    END_BALANCE_SERVICE_FEE_FIELD_NUMBER: _ClassVar[int]
    END_BALANCE_KAVAK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    END_BALANCE_INSURANCE_FIELD_NUMBER: _ClassVar[int]
    END_BALANCE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    cuota: int
    saldo_insoluto: float
    capital: float
    interes: float
    cargos: float
    iva: float
    exigible: float
    end_balance_main: float
    end_balance_service_fee: float
    end_balance_kavak_total: float
    end_balance_insurance: float
    end_balance_total: float
    def __init__(self, cuota: _Optional[int] = ..., saldo_insoluto: _Optional[float] = ..., capital: _Optional[float] = ..., interes: _Optional[float] = ..., cargos: _Optional[float] = ..., iva: _Optional[float] = ..., exigible: _Optional[float] = ..., end_balance_main: _Optional[float] = ..., end_balance_service_fee: _Optional[float] = ..., end_balance_kavak_total: _Optional[float] = ..., end_balance_insurance: _Optional[float] = ..., end_balance_total: _Optional[float] = ...) -> None: ...

class GetAmortizationTableResponse(_message.Message):
    __slots__ = ("offer", "rows")
    OFFER_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    offer: Offer
    rows: _containers.RepeatedCompositeFieldContainer[AmortizationRow]
    def __init__(self, offer: _Optional[_Union[Offer, _Mapping]] = ..., rows: _Optional[_Iterable[_Union[AmortizationRow, _Mapping]]] = ...) -> None: ...

class WatchOffersRequest(_message.Message):
    __slots__ = ("customer_id", "profile", "overrides", "options", "filters")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    profile: CustomerProfile
    overrides: PricingOverrides
    options: OfferOptions
    filters: ConsiderationFilters
    def __init__(self, customer_id: _Optional[str] = ..., profile: _Optional[_Union[CustomerProfile, _Mapping]] = ..., overrides: _Optional[_Union[PricingOverrides, _Mapping]] = ..., options: _Optional[_Union[OfferOptions, _Mapping]] = ..., filters: _Optional[_Union[ConsiderationFilters, _Mapping]] = ...) -> None: ...

class OfferKey(_message.Message):
    __slots__ = ("car_id", "term")
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    car_id: str
    term: int
    def __init__(self, car_id: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class WatchOffersResponse(_message.Message):
    __slots__ = ("reason", "answer", "added", "removed", "changed", "summary")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    reason: WatchReason
    answer: GenerateOffersResponse
    added: _containers.RepeatedCompositeFieldContainer[Offer]
    removed: _containers.RepeatedCompositeFieldContainer[OfferKey]
    changed: _containers.RepeatedCompositeFieldContainer[Offer]
    summary: OfferSummary
    def __init__(self, reason: _Optional[_Union[WatchReason, str]] = ..., answer: _Optional[_Union[GenerateOffersResponse, _Mapping]] = ..., added: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ..., removed: _Optional[_Iterable[_Union[OfferKey, _Mapping]]] = ..., changed: _Optional[_Iterable[_Union[Offer, _Mapping]]] = ..., summary: _Optional[_Union[OfferSummary, _Mapping]] = ...) -> None: ...
