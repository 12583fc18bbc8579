"""Consideration filters: which of a customer's logical trade-ups are priced at all.

`ConsiderationFilters` is the request's form, canonical (names folded, sorted, deduplicated) so
that equal filters are equal keys (prefilter cache, watch groups). `resolve` binds it to one
customer: the ratios become bounds, the same/other-brand flags become brand sets. The resulting
`Bounds` is what every prefilter applies, each its own way but to the same effect: the SQL
statement (repository.py), the snapshot's columns (inventory.py), one car row (`Bounds.passes`,
the watch dispatcher). Names match ignoring case: `fold` on every side (SQL: LOWER, with SQLite
lent Python's, so both databases fold as Python does).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..domain import Car, Customer
from ..errors import FailedPrecondition


def fold(name: str) -> str:
    """The form in which names (brands, regions, colours) are compared."""
    return name.lower()


def names(values) -> tuple[str, ...]:
    """Names in canonical form: folded, deduplicated, sorted."""
    return tuple(sorted({fold(value) for value in values}))


@dataclass(frozen=True)
class ConsiderationFilters:
    """A request's filters (validated by the caller); None / empty / False: not filtered."""
    price_min: float | None = None
    price_max: float | None = None
    max_price_vs_current: float | None = None
    brands: tuple[str, ...] = ()          # canonical: see names()
    exclude_brands: tuple[str, ...] = ()
    same_brand_as_current: bool = False
    other_brand_than_current: bool = False
    year_min: int | None = None
    year_max: int | None = None
    km_max: int | None = None
    max_km_vs_current: float | None = None
    promotion_only: bool = False
    regions: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self != NO_FILTERS

    def resolve(self, customer: Customer | None) -> "Bounds | None":
        """The bounds for this customer (None: nothing filtered); customer None: a search without
        one, whose CUSTOMER_FILTERS are unset. FailedPrecondition when a same/other-brand filter
        meets a customer without a current brand."""
        if self is NO_FILTERS or not self:
            return None
        current = fold(customer.current_car_brand) if customer is not None else ""
        for flag in ("same_brand_as_current", "other_brand_than_current"):
            if getattr(self, flag) and not current:
                raise FailedPrecondition(f"the customer {customer.customer_id!r} has no current_car_brand",
                                         f"filters.{flag}", reason="CUSTOMER_BRAND_UNKNOWN")
        brands = frozenset(self.brands) if self.brands else None
        if self.same_brand_as_current:
            brands = frozenset({current}) & brands if brands is not None else frozenset({current})
        excluded = frozenset(self.exclude_brands) | ({current} if self.other_brand_than_current else set())
        price_high = _lowest(self.price_max, None if self.max_price_vs_current is None
                             else self.max_price_vs_current * customer.current_car_price)
        km_high = _lowest(self.km_max, None if self.max_km_vs_current is None
                          else self.max_km_vs_current * customer.current_car_km)
        return Bounds(price_low=self.price_min, price_high=price_high, year_low=self.year_min,
                      year_high=self.year_max, km_high=km_high, brands=brands, excluded_brands=excluded,
                      promotion_only=self.promotion_only,
                      regions=frozenset(self.regions) if self.regions else None,
                      colors=frozenset(self.colors) if self.colors else None)


NO_FILTERS = ConsiderationFilters()
# The filters relative to the customer's current car: a search without a customer refuses them.
CUSTOMER_FILTERS = ("max_price_vs_current", "same_brand_as_current", "other_brand_than_current", "max_km_vs_current")


def _lowest(*values):
    given = [value for value in values if value is not None]
    return min(given) if given else None


@dataclass(frozen=True)
class Bounds:
    """Filters bound to one customer; every bound inclusive, None: not bounded. Hashable: part
    of the prefilter cache key. A name set that is empty lets no car pass."""
    price_low: float | None = None
    price_high: float | None = None
    year_low: int | None = None
    year_high: int | None = None
    km_high: float | None = None
    brands: frozenset[str] | None = None      # folded; the car's brand is one of them
    excluded_brands: frozenset[str] = frozenset()
    promotion_only: bool = False
    regions: frozenset[str] | None = None
    colors: frozenset[str] | None = None

    def passes(self, car: Car) -> bool:
        """Whether one car row passes (the watch dispatcher's test of a changed car)."""
        price, brand = car.price, fold(car.brand)
        return ((self.price_low is None or price >= self.price_low)
                and (self.price_high is None or price <= self.price_high)
                and (self.year_low is None or car.year >= self.year_low)
                and (self.year_high is None or car.year <= self.year_high)
                and (self.km_high is None or car.kilometers <= self.km_high)
                and (self.brands is None or brand in self.brands) and brand not in self.excluded_brands
                and (not self.promotion_only or car.has_promotion)
                and (self.regions is None or fold(car.region) in self.regions)
                and (self.colors is None or fold(car.color) in self.colors))
