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


def customer_ids() -> list[str]:
    """The stored customers, in file order."""
    return list(customers())


def offers_of(customer_id: str) -> dict:
    """The customer's record in offers.jsonl.gz: `cars` (the prefilter, limit 500) and `offers` (every
    tier and term), which is what the server answers under its default options."""
    return next(r for r in offers() if r["customer_id"] == customer_id)


def customer_where(what: str, condition) -> str:
    """The first customer whose offers record meets `condition`; a set without one fails, saying `what` it lacks."""
    found = next((r["customer_id"] for r in offers() if condition(r)), None)
    assert found is not None, f"the vector set {GOLDEN_DIR} has no customer with {what}"
    return found


def customer_with_offers(at_least: int = 1) -> str:
    return customer_where(f"{at_least} offers or more", lambda r: len(r["offers"]) >= at_least)


def customers_with_offers(count: int) -> list[str]:
    """The first `count` customers that have offers; a set with fewer fails, saying so."""
    found = [r["customer_id"] for r in offers() if r["offers"]][:count]
    assert len(found) == count, f"the vector set {GOLDEN_DIR} has fewer than {count} customers with offers"
    return found


def spread(records: list[dict], count: int = 10) -> list[dict]:
    """Up to `count` records spread evenly over the set, whatever its size."""
    return records[::max(1, len(records) // count)][:count]


def stored_subsidies() -> list[dict]:
    """The subsidy pairs whose customer is in customers.json (the others carry theirs inline only)."""
    return [r for r in subsidies() if r["customer"]["customer_id"] in customers()]


def write_subset(target: Path, n_customers: int) -> None:
    """A smaller set in the same format in `target`: `n_customers` customers spread over this one
    (the last swapped for one with a schedule if none has any and the set holds some) with their
    offers, subsidy pairs and schedules, plus two pairs whose customer travels inline only; the
    whole inventory and the parameters (the prefilter runs over the whole inventory)."""
    target.mkdir(parents=True, exist_ok=True)
    chosen = spread(offers(), n_customers)
    if schedules() and not {r["customer_id"] for r in schedules()} & {r["customer_id"] for r in chosen}:
        chosen[-1] = offers_of(schedules()[0]["customer_id"])
    ids = {r["customer_id"] for r in chosen}
    inline_only = [r for r in subsidies() if r["customer"]["customer_id"] not in customers()][:2]
    for name in ("params.json", "inventory.json"):
        (target / name).write_bytes((GOLDEN_DIR / name).read_bytes())
    (target / "customers.json").write_text(json.dumps([customers()[i] for i in sorted(ids)]))
    for name, records in (("offers.jsonl.gz", chosen),
                          ("subsidy.jsonl.gz", [r for r in subsidies() if r["customer"]["customer_id"] in ids]
                           + inline_only),
                          ("amortization.jsonl.gz", [r for r in schedules() if r["customer_id"] in ids])):
        with gzip.open(target / name, "wt") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)


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
