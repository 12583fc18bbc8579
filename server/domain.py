"""Domain types shared by services and data access (no protobuf here). Money in MXN."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Customer:
    customer_id: str
    current_monthly_payment: float
    outstanding_balance: float
    current_car_price: float      # today's value of the current car
    current_car_year: int
    current_car_km: int
    risk_profile_name: str
    risk_profile_index: int | None  # row of the down-payment table; None: from the name
    region: str = ""
    current_car_brand: str = ""   # optional; the same/other-brand filters need it
    current_car_model: str = ""


@dataclass(frozen=True)
class Car:
    car_id: str
    brand: str
    model: str
    year: int
    kilometers: int
    regular_price: float
    promotion_price: float | None
    region: str
    color: str
    available: bool = True

    @property
    def price(self) -> float:
        """The financing price: the promotion price when it is lower (SPEC §1)."""
        if self.promotion_price is not None and self.promotion_price < self.regular_price:
            return self.promotion_price
        return self.regular_price

    @property
    def has_promotion(self) -> bool:
        return self.price != self.regular_price


@dataclass(frozen=True)
class ConfigChange:
    """One row of the configuration history; values are JSON-decoded (None: no value)."""
    version: int
    key: str
    old: Any
    new: Any
    changed_at: datetime
    changed_by: str
