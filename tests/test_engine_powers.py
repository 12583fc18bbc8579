"""Growth factors (1 + j) ** n are the correctly rounded exact powers, on every CPU (SPEC §3
"Floating point"): plan.growth_factor against fractions.Fraction, the SPEC's own definition, on
over 120,000 (rate, term) pairs, among them the ones libm's and numpy's `pow` round wrongly on this
machine and the ones closest to a rounding midpoint, each found by a search, not written down.
"""
import math
from fractions import Fraction

import numpy as np
import pytest

from engine_ext.plan import growth_factor, growth_powers


def cases():
    """Every annual rate in basis points up to 100 %, as the monthly rates the plans use (r / 12 and
    r * 1.16 / 12), at the six default terms; and four of them at every term up to 600."""
    rates = [bp / 10_000 * factor / 12.0 for bp in range(1, 10_001) for factor in (1.0, 1.16)]
    return [(rate, n) for rate in rates for n in (12, 24, 36, 48, 60, 72)] + \
        [(rate, n) for rate in rates[::5_000] for n in range(601)]


@pytest.fixture(scope="module")
def exact():
    """(rate, term) -> (the exact power rounded once, whether its top 64 bits end like a midpoint:
    1 and ten 0s below the 53 that are kept, with more bits further down)."""
    table = {}
    for rate, n in cases():
        power = Fraction(1.0 + rate) ** n  # the denominator is a power of 2: the bits are the numerator's
        drop = power.numerator.bit_length() - 64
        table[rate, n] = (float(power), drop > 0 and (power.numerator >> drop) & 0x7FF == 0x400)
    return table


def test_growth_factors_are_the_exact_powers_rounded_once(exact):
    assert len(exact) > 120_000
    wrong = [(rate, n) for (rate, n), (value, _) in exact.items() if growth_factor(rate, n) != value]
    assert not wrong, f"{len(wrong)} wrong, first {wrong[:3]}"


# (basis points, rate factor, term) of pairs whose power glibc 2.36's `pow` rounds wrongly on
# x86-64 (a sample of the 102 the search below finds there): among the cases on every host, even
# one whose own `pow` gets them right.
GLIBC_MISSES = [(72, 1.0, 24), (433, 1.16, 36), (796, 1.0, 48), (1016, 1.0, 60), (1759, 1.0, 12),
                (2190, 1.16, 48), (2816, 1.16, 12), (3490, 1.0, 60), (3645, 1.16, 72), (3973, 1.16, 12),
                (4456, 1.16, 48), (4748, 1.16, 12), (4954, 1.16, 60), (5208, 1.16, 60), (5479, 1.16, 72),
                (5947, 1.0, 24), (6062, 1.16, 36), (6469, 1.16, 24), (7057, 1.0, 48), (7646, 1.0, 36)]


def test_the_powers_libm_and_numpy_round_wrongly_are_right(exact):
    """The pairs where this host's `pow` misses the last bit (glibc's libm in about 0.1 % of
    cases, numpy on AVX-512 CPUs in about 4 %), and those glibc misses on x86-64, are among the
    cases, and growth_factor gets them right."""
    pairs = list(exact)
    values = np.array([value for value, _ in exact.values()])
    bases, exponents = np.array([1.0 + rate for rate, _ in pairs]), np.array([n for _, n in pairs])
    libm = [pair for pair, value in zip(pairs, values) if math.pow(1.0 + pair[0], pair[1]) != value]
    numpy = [pairs[k] for k in np.flatnonzero(np.power(bases, exponents) != values)]
    glibc = [(bp / 10_000 * factor / 12.0, n) for bp, factor, n in GLIBC_MISSES]
    assert all(pair in exact for pair in glibc)
    print(f"this host's misses: libm {len(libm)}, numpy {len(numpy)} of {len(pairs)}")
    for rate, n in libm + numpy + glibc:
        assert growth_factor(rate, n) == exact[rate, n][0], (rate, n)


def test_midpoints_round_to_even_and_near_midpoints_to_the_nearest(exact):
    """Exact midpoints (1 + rate with a short mantissa, whose power has 54 bits) round to even; the
    pairs whose first 64 bits end like a midpoint, with a nonzero tail, round up."""
    ties = [(m / 2 ** (m.bit_length() - 1) - 1.0, n) for m in range(33, 2 ** 11, 2) for n in range(2, 40)
            if (m ** n).bit_length() == 54]
    assert len(ties) >= 20, ties
    for rate, n in ties:
        assert growth_factor(rate, n) == float(Fraction(1.0 + rate) ** n), (rate, n)
    near = [pair for pair, (_, looks_tied) in exact.items() if looks_tied]
    assert len(near) >= 20, near
    for rate, n in near:
        assert growth_factor(rate, n) == exact[rate, n][0], (rate, n)


def test_schedule_powers_are_the_growth_factors():
    rate = 0.2249 * 1.16 / 12.0
    assert growth_powers(rate, 72) == [growth_factor(rate, k) for k in range(73)]
    assert growth_powers(0.0, 12) == [1.0] * 13
