"""Business parameters of the pricing rules (SPEC §3-§4) and the customer terms the engine prices.

Everything the kernels need arrives through these immutable objects, never through module
globals, so one request's overrides cannot leak into another. The defaults are the lender's
audited values; `PricingParams.from_dict` / `to_dict` read and write the layout of
`tests/golden/params.json`, which is also the layout of the `business` configuration section.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

from .errors import EngineInputError

MIN_RATE = 1e-6  # smallest positive annual rate priced: below it (1 + j) ** n rounds to 1
DEFAULT_RATES = {
    "AAA": 0.1949, "AA": 0.1949, "A": 0.1949, "A1": 0.1949, "A2": 0.2099, "B": 0.2249,
    "C1": 0.2299, "C2": 0.2349, "C3": 0.2549, "D1": 0.2949, "D2": 0.3249, "D3": 0.3249,
    "E1": 0.2399, "E2": 0.31, "E3": 0.3399, "E4": 0.3649, "E5": 0.4399, "F1": 0.3649,
    "F2": 0.3899, "F3": 0.4149, "F4": 0.4399, "B_SB": 0.2349, "C1_SB": 0.2449, "C2_SB": 0.27,
    "E5_SB": 0.4399, "Z": 0.4399,
}
# Profile -> row of the down-payment table, in the order of the rate table above.
DEFAULT_PROFILE_INDEX = {name: row for row, name in enumerate(DEFAULT_RATES)}
DEFAULT_TERMS = (12, 24, 36, 48, 60, 72)
# Terms one plan may price: the compiled kernel's fixed arrays (_kernel.pyx MAX_TERMS). Checked
# here, where terms are configured or overridden, so both kernels only ever see valid lists.
MAX_TERMS = 64
# Values derived from one PricingParams kept at once (see PricingParams.derived): the configured
# parameters keep up to DERIVED_LIMIT (among them as many sets of overrides), each set of
# overrides up to OVERRIDDEN_DERIVED_LIMIT, so a settings version holds at most about 256 x 32.
DERIVED_LIMIT = 256
OVERRIDDEN_DERIVED_LIMIT = 32
_derived_lock = threading.Lock()  # adding and evicting (a hit takes no lock)
_MISSING = object()
_DOWN_BY_PROFILE = (0.30, 0.25, 0.20, 0.15, 0.15, 0.20, 0.20, 0.20, 0.20, 0.20, 0.25, 0.30, 0.35,
                    0.35, 0.35, 0.35, 0.75, 0.35, 0.35, 0.35, 0.75, 0.25, 0.30, 0.30, 0.75, 0.9999)
DEFAULT_DOWN_ROWS = tuple(tuple(frac for _ in DEFAULT_TERMS) for frac in _DOWN_BY_PROFILE)


def check_finite(name: str, value: Any, *, minimum: float | None = None,
                 maximum: float | None = None, strict_minimum: bool = False) -> float:
    """Return `value` as a float, or raise EngineInputError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EngineInputError(name, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise EngineInputError(name, f"must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        raise EngineInputError(name, f"must be {'>' if strict_minimum else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise EngineInputError(name, f"must be <= {maximum}, got {value}")
    return value


def check_rate(name: str, value: Any) -> float:
    """An annual rate as a fraction; a value above 1 is read as percent (18.5 -> 0.185)."""
    rate = check_finite(name, value, minimum=0.0)
    if rate > 1.0:
        rate /= 100.0
    if rate > 1.0 or 0.0 < rate < MIN_RATE:
        raise EngineInputError(name, f"must be 0 or within [{MIN_RATE}, 1] (or a percent up to 100), got {value}")
    return rate


def _check_int(name: str, value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise EngineInputError(name, f"must be a whole number in [{minimum}, {maximum}], got {value!r}")
    return value


@dataclass(frozen=True)
class Fees:
    """Fees of one offer. Percentages are fractions of the car price; amounts are MXN."""
    service_fee_pct: float = 0.04
    cxa_pct: float = 0.04
    cac_bonus: float = 0.0
    kavak_total_amount: float = 25_000.0
    insurance_amount: float = 10_999.0
    insurance_term_months: int = 12
    gps_installation_fee: float = 750.0  # before IVA
    gps_monthly_fee: float = 350.0       # before IVA
    gps_fees_include_iva: bool = True

    def __post_init__(self) -> None:
        for name in ("service_fee_pct", "cxa_pct"):
            object.__setattr__(self, name, check_finite(f"fees.{name}", getattr(self, name), minimum=0.0, maximum=1.0))
        for name in ("cac_bonus", "kavak_total_amount", "insurance_amount", "gps_installation_fee", "gps_monthly_fee"):
            object.__setattr__(self, name, check_finite(f"fees.{name}", getattr(self, name), minimum=0.0, maximum=1e9))
        object.__setattr__(self, "insurance_term_months",
                           _check_int("fees.insurance_term_months", self.insurance_term_months, 1, 120))
        if not isinstance(self.gps_fees_include_iva, bool):
            raise EngineInputError("fees.gps_fees_include_iva", "must be true or false")


def change_errors(build: Callable[[dict[str, Any]], Any], changes: dict[str, Any],
                  error: type[Exception] = EngineInputError, field: Callable[[Any], str] = lambda exc: exc.field
                  ) -> list:
    """Every wrong one of `changes`, which `build` (raising `error` at the first) would not say:
    built again without the changes each error names (`field`), until the rest build or an error
    names none of them (then it comes from a change left out). Not each change alone: changes
    that only fit together (terms and the down-payment columns, a grid's min and max) are right
    together, and stay so."""
    errors, left = [], dict(changes)
    while True:
        try:
            build(left)
            return errors
        except error as exc:
            named = field(exc)
            blamed = [name for name in left if named == name or named.endswith("." + name)
                      or named.startswith((name + ".", name + "["))]
            if errors and not blamed:  # what leaving the others out caused: none of them is wrong
                return errors
            errors.append(exc)
            if not blamed:
                return errors
            for name in blamed:
                del left[name]


@dataclass(frozen=True)
class TierBounds:
    """Payment-delta bounds (fractions): Refresh [floor, refresh_max], Upgrade (refresh_max,
    upgrade_max], Max Upgrade (upgrade_max, ceiling]; anything else is not offered."""
    floor: float = -0.05
    refresh_max: float = 0.05
    upgrade_max: float = 0.25
    ceiling: float = 1.0

    def __post_init__(self) -> None:
        values = [check_finite(f"tiers.{f.name}", getattr(self, f.name), minimum=-1.0, maximum=100.0)
                  for f in fields(self)]
        if not values[0] <= values[1] <= values[2] <= values[3]:
            raise EngineInputError("tiers", "bounds must satisfy floor <= refresh_max <= upgrade_max <= ceiling")


@dataclass(frozen=True)
class SubsidyGrid:
    """Minimum-subsidy search grid and gates (SPEC §3)."""
    term_order: tuple[int, ...] = (48, 60, 36, 72)
    service_fee_max: float = 0.05
    service_fee_min: float = 0.02
    service_fee_step: float = 0.005
    cac_min: float = 0.0
    cac_max: float = 10_000.0
    cac_step: float = 500.0
    cxa_max: float = 0.04
    cxa_min: float = 0.01
    cxa_step: float = 0.005
    kavak_total_enabled: bool = True
    kavak_total_amount: float = 25_000.0
    max_payment_delta: float = 1.0
    min_npv: float = 5_000.0
    max_loan_to_value: float = 0.9

    def __post_init__(self) -> None:
        order = tuple(_check_int("subsidy.term_order[]", t, 1, 600) for t in self.term_order)
        if not order or len(set(order)) != len(order):
            raise EngineInputError("subsidy.term_order", "must list at least one term, each once")
        if len(order) > MAX_TERMS:
            raise EngineInputError("subsidy.term_order", f"must list at most {MAX_TERMS} terms, got {len(order)}")
        object.__setattr__(self, "term_order", order)
        for prefix, top in (("service_fee", 1.0), ("cac", 1e9), ("cxa", 1.0)):
            lo, hi = (f"{prefix}_min", f"{prefix}_max")
            for name in (lo, hi):
                object.__setattr__(self, name, check_finite(f"subsidy.{name}", getattr(self, name), minimum=0.0, maximum=top))
            if getattr(self, lo) > getattr(self, hi):
                raise EngineInputError(f"subsidy.{lo}", f"must not exceed subsidy.{hi}")
            step = check_finite(f"subsidy.{prefix}_step", getattr(self, f"{prefix}_step"), minimum=0.0, strict_minimum=True)
            if (getattr(self, hi) - getattr(self, lo)) / step > 1000:
                raise EngineInputError(f"subsidy.{prefix}_step", "gives more than 1,000 grid values")
            object.__setattr__(self, f"{prefix}_step", step)
        object.__setattr__(self, "kavak_total_amount",
                           check_finite("subsidy.kavak_total_amount", self.kavak_total_amount, minimum=0.0, maximum=1e9))
        for name in ("max_payment_delta", "min_npv", "max_loan_to_value"):
            object.__setattr__(self, name, check_finite(f"subsidy.{name}", getattr(self, name)))
        if not isinstance(self.kavak_total_enabled, bool):
            raise EngineInputError("subsidy.kavak_total_enabled", "must be true or false")

    @staticmethod
    def _values(start: float, step: float, end: float, sign: int) -> tuple[float, ...]:
        # start ± k*step from the integer k, rounded to 10 decimals: never accumulated, so
        # both ends are always reached.
        count = int(round(abs(end - start) / step, 10)) + 1
        return tuple(round(start + sign * k * step, 10) for k in range(count))

    def service_fee_values(self) -> tuple[float, ...]:
        return self._values(self.service_fee_max, self.service_fee_step, self.service_fee_min, -1)

    def cac_values(self) -> tuple[float, ...]:
        return self._values(self.cac_min, self.cac_step, self.cac_max, +1)

    def cxa_values(self) -> tuple[float, ...]:
        return self._values(self.cxa_max, self.cxa_step, self.cxa_min, -1)

    def change_errors(self, **changes: Any) -> list[EngineInputError]:
        """Every wrong change of a copy with `changes` (replace stops at the first)."""
        return change_errors(lambda given: replace(self, **given), changes)


@dataclass(frozen=True)
class PricingParams:
    """Every business parameter of the pricing rules; immutable, validated on construction."""
    iva_rate: float = 0.16
    terms: tuple[int, ...] = DEFAULT_TERMS
    term_rate_adjustments: Mapping[int, float] = field(default_factory=lambda: {60: 0.01, 72: 0.015})
    interest_rate_table: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    interest_rate_unknown_profile: float = 0.18
    risk_profile_index: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PROFILE_INDEX))
    risk_profile_index_unknown: int = 25
    down_payment_terms: tuple[int, ...] = DEFAULT_TERMS
    down_payment_rows: tuple[tuple[float, ...], ...] = DEFAULT_DOWN_ROWS
    fees: Fees = field(default_factory=Fees)
    npv_base_margin_deduction: float = 2_000.0
    tiers: TierBounds = field(default_factory=TierBounds)
    subsidy: SubsidyGrid = field(default_factory=SubsidyGrid)
    rate_override: float | None = None  # per request; replaces the profile's annual rate
    # What is computed from these parameters once and then read (see `derived`).
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _derived_limit: int = field(default=DERIVED_LIMIT, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("iva_rate", check_finite("iva_rate", self.iva_rate, minimum=0.0, maximum=1.0))
        set_("down_payment_terms", tuple(_check_int("down_payment_table.columns_terms[]", t, 1, 600)
                                         for t in self.down_payment_terms))
        if len(set(self.down_payment_terms)) != len(self.down_payment_terms):
            raise EngineInputError("down_payment_table.columns_terms", "lists a term twice")
        set_("terms", self.check_terms(self.terms, "terms"))
        set_("term_rate_adjustments", {
            _check_int("term_rate_adjustments (term)", int(t) if isinstance(t, str) and t.isdigit() else t, 1, 600):
            check_finite(f"term_rate_adjustments.{t}", a, minimum=-1.0, maximum=1.0)
            for t, a in dict(self.term_rate_adjustments).items()})
        set_("interest_rate_table", {str(k): check_rate(f"interest_rate_table.{k}", v)
                                     for k, v in dict(self.interest_rate_table).items()})
        set_("interest_rate_unknown_profile", check_rate("interest_rate_unknown_profile",
                                                         self.interest_rate_unknown_profile))
        rows = tuple(tuple(check_finite(f"down_payment_table.rows_by_risk_profile_index[{r}][{c}]", x,
                                        minimum=0.0, maximum=1.0) for c, x in enumerate(row))
                     for r, row in enumerate(self.down_payment_rows))
        if not rows or any(len(row) != len(self.down_payment_terms) for row in rows):
            raise EngineInputError("down_payment_table.rows_by_risk_profile_index",
                                   f"every row must have one value per column term ({len(self.down_payment_terms)})")
        set_("down_payment_rows", rows)
        set_("risk_profile_index", {str(k): _check_int(f"risk_profile_index.{k}", v, 0, len(rows) - 1)
                                    for k, v in dict(self.risk_profile_index).items()})
        set_("risk_profile_index_unknown", _check_int("risk_profile_index_unknown",
                                                      self.risk_profile_index_unknown, 0, len(rows) - 1))
        set_("npv_base_margin_deduction", check_finite("npv_base_margin_deduction", self.npv_base_margin_deduction))
        if self.rate_override is not None:
            set_("rate_override", check_rate("rate_override", self.rate_override))
        for t in self.subsidy.term_order:
            self.down_payment_column(t, "subsidy.term_order")

    def check_terms(self, terms: Any, name: str) -> tuple[int, ...]:
        """Distinct terms that have a down-payment column, ascending."""
        checked = sorted({_check_int(f"{name}[]", t, 1, 600) for t in terms})
        if not checked:
            raise EngineInputError(name, "must list at least one term")
        if len(checked) > MAX_TERMS:
            raise EngineInputError(name, f"must list at most {MAX_TERMS} terms, got {len(checked)}")
        for t in checked:
            self.down_payment_column(t, name)
        return tuple(checked)

    def down_payment_column(self, term: int, name: str = "term") -> int:
        try:
            return self.down_payment_terms.index(term)
        except ValueError:
            raise EngineInputError(name, f"term {term} has no down-payment column "
                                         f"(columns: {list(self.down_payment_terms)})") from None

    def annual_rate(self, risk_profile_name: str) -> float:
        """The contractual annual rate before the term adjustment."""
        if self.rate_override is not None:
            return self.rate_override
        return self.interest_rate_table.get(risk_profile_name, self.interest_rate_unknown_profile)

    def profile_index(self, risk_profile_name: str) -> int:
        """Row of the down-payment table for a profile name (unknown profile -> the fallback row)."""
        return self.risk_profile_index.get(risk_profile_name, self.risk_profile_index_unknown)

    def derived(self, key: tuple, compute) -> Any:
        """compute(), once per key for these parameters (they never change): the parameters of a
        set of overrides, the term columns of a risk profile. The configured parameters live as
        long as their settings version, and each set of overrides is kept with them, so a call
        repeating an earlier one recomputes nothing. Bounded (`_derived_limit`), oldest out first;
        two threads may both compute a missing value: the first one kept is the one returned."""
        value = self._derived.get(key, _MISSING)
        if value is _MISSING:
            value = compute()
            with _derived_lock:
                cache = self._derived
                if key not in cache:
                    if len(cache) >= self._derived_limit:
                        del cache[next(iter(cache))]
                    cache[key] = value
                value = cache[key]
        return value

    def with_overrides(self, **overrides: Any) -> "PricingParams":
        """A copy with per-request overrides: fee fields by name, `interest_rate`, `terms`; the
        same copy for the same overrides."""
        if not overrides:
            return self
        given = tuple(sorted((name, tuple(value) if isinstance(value, list) else value)
                             for name, value in overrides.items()))
        return self.derived(("overrides", given), lambda: self._overridden(overrides))

    def override_errors(self, **overrides: Any) -> list[EngineInputError]:
        """Every wrong override (with_overrides stops at the first)."""
        return change_errors(self._overridden, overrides,
                             field=lambda exc: "interest_rate" if exc.field == "rate_override" else exc.field)

    def _overridden(self, overrides: dict[str, Any]) -> "PricingParams":
        fee_names = {f.name for f in fields(Fees)}
        fee_changes = {k: v for k, v in overrides.items() if k in fee_names and v is not None}
        changes: dict[str, Any] = {}
        if fee_changes:
            changes["fees"] = replace(self.fees, **fee_changes)
        if overrides.get("interest_rate") is not None:
            changes["rate_override"] = overrides["interest_rate"]
        if overrides.get("terms"):
            changes["terms"] = overrides["terms"]
        unknown = set(overrides) - fee_names - {"interest_rate", "terms"}
        if unknown:
            raise EngineInputError(sorted(unknown)[0], "is not an overridable parameter")
        if not changes:
            return self
        overridden = replace(self, **changes)
        object.__setattr__(overridden, "_derived_limit", OVERRIDDEN_DERIVED_LIMIT)  # frozen
        return overridden

    # --- the layout of params.json ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PricingParams":
        """Build from the params.json layout; missing keys keep their defaults."""
        known = {"currency", "iva_rate", "terms", "term_rate_adjustments", "interest_rate_table",
                 "interest_rate_unknown_profile", "risk_profile_index", "risk_profile_index_unknown",
                 "down_payment_table", "fees", "npv_base_margin_deduction", "tiers", "subsidy_search",
                 "prefilter"}
        for key in data:
            if key not in known:
                raise EngineInputError(key, "is not a business parameter")
        if data.get("currency", "MXN") != "MXN":
            raise EngineInputError("currency", "only MXN is supported")
        kw: dict[str, Any] = {k: data[k] for k in ("iva_rate", "terms", "interest_rate_table",
                                                   "interest_rate_unknown_profile", "risk_profile_index",
                                                   "risk_profile_index_unknown", "npv_base_margin_deduction")
                              if k in data}
        if "terms" in kw:
            kw["terms"] = tuple(kw["terms"])
        if "term_rate_adjustments" in data:
            kw["term_rate_adjustments"] = {_term_key(t): a for t, a in data["term_rate_adjustments"].items()}
        if "down_payment_table" in data:
            table = data["down_payment_table"]
            kw["down_payment_terms"] = tuple(table.get("columns_terms", DEFAULT_TERMS))
            kw["down_payment_rows"] = tuple(tuple(row) for row in table.get("rows_by_risk_profile_index", ()))
        if "fees" in data:
            kw["fees"] = _build(Fees, data["fees"], "fees")
        if "tiers" in data:
            t = data["tiers"]
            kw["tiers"] = TierBounds(floor=t["refresh"]["min"], refresh_max=t["refresh"]["max"],
                                     upgrade_max=t["upgrade"]["max"], ceiling=t["max_upgrade"]["max"])
        if "subsidy_search" in data:
            s = data["subsidy_search"]
            flat = {"term_order": tuple(s.get("term_order", SubsidyGrid.term_order))}
            for prefix, key in (("service_fee", "service_fee_pct"), ("cac", "cac_bonus"), ("cxa", "cxa_pct")):
                for part in ("min", "max", "step"):
                    if part in s.get(key, {}):
                        flat[f"{prefix}_{part}"] = s[key][part]
            flat.update({k: s[k] for k in ("kavak_total_enabled", "kavak_total_amount") if k in s})
            flat.update(s.get("gates", {}))
            kw["subsidy"] = _build(SubsidyGrid, flat, "subsidy_search")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The params.json layout (round-trips through from_dict)."""
        s, t = self.subsidy, self.tiers
        return {
            "currency": "MXN",
            "iva_rate": self.iva_rate,
            "terms": list(self.terms),
            "term_rate_adjustments": {str(k): v for k, v in self.term_rate_adjustments.items()},
            "interest_rate_table": dict(self.interest_rate_table),
            "interest_rate_unknown_profile": self.interest_rate_unknown_profile,
            "risk_profile_index": dict(self.risk_profile_index),
            "risk_profile_index_unknown": self.risk_profile_index_unknown,
            "down_payment_table": {"columns_terms": list(self.down_payment_terms),
                                   "rows_by_risk_profile_index": [list(r) for r in self.down_payment_rows]},
            "fees": {f.name: getattr(self.fees, f.name) for f in fields(Fees)},
            "npv_base_margin_deduction": self.npv_base_margin_deduction,
            "tiers": {
                "refresh": {"min": t.floor, "max": t.refresh_max, "min_inclusive": True, "max_inclusive": True},
                "upgrade": {"min": t.refresh_max, "max": t.upgrade_max, "min_inclusive": False, "max_inclusive": True},
                "max_upgrade": {"min": t.upgrade_max, "max": t.ceiling, "min_inclusive": False, "max_inclusive": True},
            },
            "subsidy_search": {
                "term_order": list(s.term_order),
                "service_fee_pct": {"max": s.service_fee_max, "min": s.service_fee_min, "step": s.service_fee_step},
                "cac_bonus": {"min": s.cac_min, "max": s.cac_max, "step": s.cac_step},
                "cxa_pct": {"max": s.cxa_max, "min": s.cxa_min, "step": s.cxa_step},
                "kavak_total_enabled": s.kavak_total_enabled,
                "kavak_total_amount": s.kavak_total_amount,
                "gates": {"max_payment_delta": s.max_payment_delta, "min_npv": s.min_npv,
                          "max_loan_to_value": s.max_loan_to_value},
            },
        }


def _term_key(key: Any) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise EngineInputError("term_rate_adjustments", f"keys must be terms in months, got {key!r}") from None


def _build(cls: type, data: Mapping[str, Any], section: str) -> Any:
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names and key not in ("npv_cost", "reasons"):  # descriptive keys of params.json
            raise EngineInputError(f"{section}.{key}", "is not a known parameter")
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class CustomerTerms:
    """What the engine needs of a customer. Money in MXN."""
    current_monthly_payment: float
    vehicle_equity: float  # current car value minus outstanding balance; may be negative
    risk_profile_name: str
    risk_profile_index: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "current_monthly_payment",
                           check_finite("current_monthly_payment", self.current_monthly_payment,
                                        minimum=0.0, strict_minimum=True, maximum=1e9))
        object.__setattr__(self, "vehicle_equity",
                           check_finite("vehicle_equity", self.vehicle_equity, minimum=-1e10, maximum=1e10))
        if not isinstance(self.risk_profile_name, str):
            raise EngineInputError("risk_profile_name", "must be a string")
        object.__setattr__(self, "risk_profile_index",
                           _check_int("risk_profile_index", self.risk_profile_index, 0, 10_000))

    @classmethod
    def from_balance(cls, current_monthly_payment: float, current_car_price: float, outstanding_balance: float,
                     risk_profile_name: str, risk_profile_index: int) -> "CustomerTerms":
        """Vehicle equity = today's value of the current car - the outstanding balance (SPEC §1)."""
        return cls(current_monthly_payment, current_car_price - outstanding_balance, risk_profile_name,
                   risk_profile_index)
