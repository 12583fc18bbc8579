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
