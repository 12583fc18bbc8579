"""Deterministic demo data: about 4,000 cars and 5,000 customers shaped like the lender's
(12 brands, model years 2015-2024, prices ~200k-700k MXN, customers mostly A1/A2 paying
~3.5k-10k MXN a month on a 2011-2021 car). `python -m server seed` loads it (in one transaction),
as does the first start on an empty embedded database."""
from __future__ import annotations

import random

from engine_ext import PricingParams

from ..domain import Car, Customer

MODELS = {
    "Audi": ("A3", "A4", "Q3", "Q5"), "BMW": ("Serie 1", "Serie 3", "X1", "X3"),
    "Chevrolet": ("Aveo", "Onix", "Cavalier", "Tracker"), "Ford": ("Figo", "Fiesta", "Escape", "Ranger"),
    "Honda": ("City", "Civic", "Accord", "CR-V", "HR-V"), "Hyundai": ("Accent", "Elantra", "Tucson", "Creta"),
    "Kia": ("Rio", "Forte", "Seltos", "Sportage"), "Mazda": ("Mazda 2", "Mazda 3", "CX-3", "CX-5"),
    "Mercedes": ("Clase A", "Clase C", "GLA", "GLC"), "Nissan": ("March", "Versa", "Sentra", "Kicks", "X-Trail"),
    "Toyota": ("Yaris", "Corolla", "RAV4", "Hilux"), "Volkswagen": ("Polo", "Vento", "Jetta", "Tiguan"),
}
PREMIUM = {"Audi": 1.6, "BMW": 1.7, "Mercedes": 1.8}
REGIONS = ("CDMX", "Guadalajara", "Monterrey", "Puebla", "Querétaro")
COLORS = ("Blanco", "Negro", "Gris", "Plata", "Rojo", "Azul")
PROFILE_WEIGHTS = {"A1": 60, "A2": 12, "AA": 4, "AAA": 3, "A": 3, "B": 5, "C1": 3, "C2": 3, "C3": 2, "D1": 1,
                   "E1": 1, "F1": 1, "B_SB": 1, "Z": 1}


def _round_price(value: float) -> float:
    """Published prices end in 999 (e.g. 329,999 MXN)."""
    return max(99_999.0, round(value / 1000.0) * 1000.0 - 1.0)


def demo_cars(count: int = 4000, seed: int = 20261125) -> list[Car]:
    rng = random.Random(seed)
    brands = sorted(MODELS)
    cars = []
    for k in range(1, count + 1):
        brand = rng.choice(brands)
        model = rng.choice(MODELS[brand])
        year = rng.choices(range(2015, 2025), weights=(4, 6, 8, 10, 11, 12, 13, 13, 12, 11))[0]
        age = 2025 - year
        kilometers = int(max(500, rng.gauss(13_000 * age, 6_000 * max(1, age) ** 0.5)))
        base = rng.lognormvariate(12.75, 0.28) * PREMIUM.get(brand, 1.0) * (1.0 - 0.045 * age)
        regular = _round_price(base)
        promotion = _round_price(regular * rng.uniform(0.90, 0.97)) if rng.random() < 0.15 else None
        cars.append(Car(car_id=f"INV{k:05d}", brand=brand, model=model, year=year, kilometers=kilometers,
                        regular_price=regular, promotion_price=promotion, region=rng.choice(REGIONS),
                        color=rng.choice(COLORS), available=rng.random() < 0.97))
    return cars


def demo_customers(count: int = 5000, seed: int = 20261126, params: PricingParams | None = None) -> list[Customer]:
    rng = random.Random(seed)
    cars = random.Random(seed + 1)  # the current brand and model, apart: the other fields stay as they were
    brands = sorted(MODELS)
    params = params or PricingParams()
    names, weights = zip(*PROFILE_WEIGHTS.items())
    customers = []
    for k in range(1, count + 1):
        brand = cars.choice(brands)
        year = rng.choices(range(2011, 2022), weights=(2, 3, 8, 27, 34, 37, 40, 28, 11, 9, 1))[0]
        price = _round_price(rng.lognormvariate(12.38, 0.3))
        profile = rng.choices(names, weights=weights)[0]
        customers.append(Customer(
            customer_id=f"C{k:05d}", current_monthly_payment=round(rng.lognormvariate(8.65, 0.35), 2),
            outstanding_balance=round(price * rng.uniform(0.03, 0.30), 2), current_car_price=price,
            current_car_year=year, current_car_km=int(max(5_000, rng.gauss(68_000, 25_000))),
            risk_profile_name=profile, risk_profile_index=params.profile_index(profile),
            region=rng.choice(REGIONS), current_car_brand=brand, current_car_model=cars.choice(MODELS[brand])))
    return customers
