"""Reads the reference vectors: tests/golden, or the directory named by TRADEUP_GOLDEN_DIR."""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from engine_ext import CustomerTerms, PricingParams

GOLDEN_DIR = Path(os.environ.get("TRADEUP_GOLDEN_DIR") or Path(__file__).parent / "golden")


def _lines(name: str) -> list[dict]:
    with gzip.open(GOLDEN_DIR / name, "rt") as handle:
        return [json.loads(line) for line in handle]


@lru_cache(maxsize=None)
def params() -> PricingParams:
    return PricingParams.from_dict(json.loads((GOLDEN_DIR / "params.json").read_text()))


@lru_cache(maxsize=None)
def inventory() -> dict[str, dict]:
    return {car["car_id"]: car for car in json.loads((GOLDEN_DIR / "inventory.json").read_text())}


@lru_cache(maxsize=None)
def customers() -> dict[str, dict]:
    return {c["customer_id"]: c for c in json.loads((GOLDEN_DIR / "customers.json").read_text())}


@lru_cache(maxsize=None)
def offers() -> list[dict]:
    return _lines("offers.jsonl.gz")


@lru_cache(maxsize=None)
def subsidies() -> list[dict]:
    return _lines("subsidy.jsonl.gz")


@lru_cache(maxsize=None)
def schedules() -> list[dict]:
    return _lines("amortization.jsonl.gz")


def terms_of(customer: dict) -> CustomerTerms:
    return CustomerTerms(
        current_monthly_payment=customer["current_monthly_payment"],
        vehicle_equity=customer["vehicle_equity"],
        risk_profile_name=customer["risk_profile_name"],
        risk_profile_index=customer["risk_profile_index"],
    )


def close(actual: float, expected: float, rel: float = 1e-9, abs_: float = 1e-6) -> bool:
    """The golden tolerance: 1e-9 relative, 1e-6 MXN absolute near zero."""
    return abs(actual - expected) <= max(rel * abs(expected), abs_)


def cars() -> list:
    """The golden inventory as domain cars (brand and model from "Brand Model Year")."""
    from server.domain import Car
    out = []
    for car in inventory().values():
        brand, _, rest = car["model"].partition(" ")
        out.append(Car(car_id=car["car_id"], brand=brand, model=rest.rsplit(" ", 1)[0], year=car["year"],
                       kilometers=car["kilometers"], regular_price=car["car_price"], promotion_price=None,
                       region="", color=""))
    return out


def domain_customers() -> list:
    from server.domain import Customer
    return [Customer(customer_id=c["customer_id"], current_monthly_payment=c["current_monthly_payment"],
                     outstanding_balance=c["outstanding_balance"], current_car_price=c["current_car_price"],
                     current_car_year=c["current_car_year"], current_car_km=c["current_car_km"],
                     risk_profile_name=c["risk_profile_name"], risk_profile_index=c["risk_profile_index"])
            for c in customers().values()]
