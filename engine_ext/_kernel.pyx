# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The compiled kernel: the same entry points and the same arithmetic, in the same order, as
kernel_py.py (the executable specification), with the loops in nogil C.

boundscheck/wraparound are off because every index below is derived from lengths checked at
the top of each entry point (`_check_lengths`); the parity and golden tests exercise them.
"""
from array import array

from libc.math cimport fabs, isfinite
from libc.stdlib cimport free, malloc, qsort

from .constants import SCHEDULE_COLUMNS
from .plan import growth_powers

IMPLEMENTATION = "compiled"
cdef double MAX_PRICE = 1e10

# Codes, as in constants.py (checked equal at import below).
cdef enum:
    REJECT_DOWN = -1
    REJECT_LOAN = -2
    REJECT_BELOW = -3
    REJECT_ABOVE = -4
    REFRESH = 1
    UPGRADE = 2
    MAX_UPGRADE = 3
    SUB_VIABLE = 0
    SUB_DELTA = 1
    SUB_NPV = 2
    SUB_LTV = 3
    SUB_DOWN = 4
    MAX_TERMS = 64

from . import constants as _c
assert (_c.REJECT_DOWN_PAYMENT_NOT_MET, _c.REJECT_LOAN_NOT_POSITIVE, _c.REJECT_DELTA_BELOW_FLOOR,
        _c.REJECT_DELTA_ABOVE_CEILING, _c.TIER_REFRESH, _c.TIER_UPGRADE, _c.TIER_MAX_UPGRADE,
        _c.SUBSIDY_VIABLE, _c.SUBSIDY_PAYMENT_DELTA_TOO_HIGH, _c.SUBSIDY_NPV_BELOW_MINIMUM,
        _c.SUBSIDY_LTV_TOO_HIGH, _c.SUBSIDY_DOWN_PAYMENT_NOT_MET) == (-1, -2, -3, -4, 1, 2, 3, 0, 1, 2, 3, 4)


cdef struct Plan:
    int n_terms
    long terms[MAX_TERMS]
    double down[MAX_TERMS]
    double rate[MAX_TERMS]        # i
    double rate_iva[MAX_TERMS]    # j
    double growth[MAX_TERMS]
    double divisor[MAX_TERMS]
    double kavak_principal[MAX_TERMS]
    double kavak_interest[MAX_TERMS]
    double insurance_principal[MAX_TERMS]
    double insurance_interest[MAX_TERMS]
    double vehicle_equity, current_payment, service_fee_pct, cxa_pct, cac_bonus
    double kavak_total, insurance, gps_install, gps_monthly, npv_deduction, iva_factor
    double tier_floor, tier_refresh_max, tier_upgrade_max, tier_ceiling


cdef int _load_plan(object plan, Plan* p) except -1:
    cols = plan.columns
    cdef int t, n = len(cols.terms)
    if n < 1 or n > MAX_TERMS:
        raise ValueError(f"terms: between 1 and {MAX_TERMS} terms, got {n}")
    p.n_terms = n
    for t in range(n):
        p.terms[t] = cols.terms[t]
        p.down[t] = cols.down_fractions[t]
        p.rate[t] = cols.monthly_rates[t]
        p.rate_iva[t] = cols.monthly_rates_iva[t]
        p.growth[t] = cols.growths[t]
        p.divisor[t] = cols.divisors[t]
        p.kavak_principal[t] = cols.kavak_principals[t]
        p.kavak_interest[t] = cols.kavak_interests[t]
        p.insurance_principal[t] = cols.insurance_principals[t]
        p.insurance_interest[t] = cols.insurance_interests[t]
    p.vehicle_equity = plan.vehicle_equity
    p.current_payment = plan.current_payment
    p.service_fee_pct = plan.service_fee_pct
    p.cxa_pct = plan.cxa_pct
    p.cac_bonus = plan.cac_bonus
    p.kavak_total = plan.kavak_total
    p.insurance = plan.insurance
    p.gps_install = plan.gps_install
    p.gps_monthly = plan.gps_monthly
    p.npv_deduction = plan.npv_deduction
    p.iva_factor = plan.iva_factor
    p.tier_floor = plan.tier_floor
    p.tier_refresh_max = plan.tier_refresh_max
    p.tier_upgrade_max = plan.tier_upgrade_max
    p.tier_ceiling = plan.tier_ceiling
    return 0


cdef inline bint _valid_price(double price) noexcept nogil:
    return isfinite(price) and 0.0 < price <= MAX_PRICE


def is_valid_price(double price):
    return _valid_price(price)


cdef inline void _check_range(Py_ssize_t first, Py_ssize_t last, Py_ssize_t n) except *:
    if first < 0 or last > n or first > last:
        raise IndexError(f"car range [{first}, {last}) outside [0, {n})")


# --- SPEC §2: the stage-1 match against an inventory snapshot --------------------------------
cdef struct Filter:
    # The consideration filters of match_filtered, as kernel_py.match_filtered reads them.
    const long* brands
    const long* colors
    const signed char* promotions
    double price_low, price_high, km_high
    long year_low, year_high
    const unsigned char* brand_ok
    const unsigned char* region_ok
    const unsigned char* color_ok
    Py_ssize_t brand_codes, region_codes, color_codes
    bint promotion_only


cdef Py_ssize_t _match(const long[:] years, const double[:] prices, const long[:] kilometers, const long[:] regions,
                       double min_price, long min_year, long max_km, long region, const Filter* f,
                       long[:] out, Py_ssize_t limit, Py_ssize_t* bad) noexcept nogil:
    """The rows of match_cars (f NULL) or match_filtered into `out`; their count. A name code
    outside its table stops it, its row in `bad`."""
    cdef Py_ssize_t row, count = 0
    cdef long brand, place, color
    cdef double price
    for row in range(prices.shape[0]):
        if count >= limit:
            break
        price, place = prices[row], regions[row]
        if not (price > min_price and years[row] >= min_year and kilometers[row] < max_km
                and (region < 0 or place == region)):
            continue
        if f != NULL:
            brand, color = f.brands[row], f.colors[row]
            if (brand < 0 or brand >= f.brand_codes or place < 0 or place >= f.region_codes
                    or color < 0 or color >= f.color_codes):
                bad[0] = row
                break
            if not (f.price_low <= price <= f.price_high and f.year_low <= years[row] <= f.year_high
                    and kilometers[row] <= f.km_high and f.brand_ok[brand] and f.region_ok[place]
                    and f.color_ok[color] and (not f.promotion_only or f.promotions[row])):
                continue
        out[count] = row
        count += 1
    return count


cdef object _matched(const long[:] years, const double[:] prices, const long[:] kilometers, const long[:] regions,
                     double min_price, long min_year, long max_km, long region, const Filter* f, Py_ssize_t limit):
    cdef Py_ssize_t n = prices.shape[0], count, bad = -1
    found = array("l", bytes(array("l").itemsize * min(max(limit, 0), n)))
    cdef long[:] out = found
    with nogil:
        count = _match(years, prices, kilometers, regions, min_price, min_year, max_km, region, f, out, limit, &bad)
    if bad >= 0:
        raise IndexError(f"row {bad}: a name code outside its table")
    return found[:count]  # a copy: `found` cannot shrink while `out` views it


def match_cars(const long[:] years, const double[:] prices, const long[:] kilometers, const long[:] regions,
               double min_price, long min_year, long max_km, long region, Py_ssize_t limit):
    cdef Py_ssize_t n = prices.shape[0]
    if years.shape[0] != n or kilometers.shape[0] != n or regions.shape[0] != n:
        raise ValueError("snapshot columns differ in length")
    return _matched(years, prices, kilometers, regions, min_price, min_year, max_km, region, NULL, limit)


def match_filtered(const long[:] years, const double[:] prices, const long[:] kilometers, const long[:] regions,
                   const long[:] brands, const long[:] colors, const signed char[:] promotions,
                   double min_price, long min_year, long max_km, long region,
                   double price_low, double price_high, long year_low, long year_high, double km_high,
                   const unsigned char[:] brand_ok, const unsigned char[:] region_ok,
                   const unsigned char[:] color_ok, bint promotion_only, Py_ssize_t limit):
    cdef Py_ssize_t n = prices.shape[0]
    cdef Filter f
    if (years.shape[0] != n or kilometers.shape[0] != n or regions.shape[0] != n or brands.shape[0] != n
            or colors.shape[0] != n or promotions.shape[0] != n):
        raise ValueError("snapshot columns differ in length")
    if n == 0:
        return array("l")
    f.brands, f.colors, f.promotions = &brands[0], &colors[0], &promotions[0]
    f.price_low, f.price_high, f.km_high, f.year_low, f.year_high = price_low, price_high, km_high, year_low, year_high
    f.brand_ok, f.region_ok, f.color_ok = &brand_ok[0] if brand_ok.shape[0] else NULL, \
        &region_ok[0] if region_ok.shape[0] else NULL, &color_ok[0] if color_ok.shape[0] else NULL
    f.brand_codes, f.region_codes, f.color_codes = brand_ok.shape[0], region_ok.shape[0], color_ok.shape[0]
    f.promotion_only = promotion_only
    return _matched(years, prices, kilometers, regions, min_price, min_year, max_km, region, &f, limit)


def take(source, const long[:] rows):
    """array of source[r] for r in rows ('d' or 'l' arrays): the snapshot columns of a selection."""
    cdef Py_ssize_t n = rows.shape[0], k, size = len(source)
    cdef const double[:] doubles
    cdef const long[:] longs
    cdef double[:] double_out
    cdef long[:] long_out
    for k in range(n):
        if rows[k] < 0 or rows[k] >= size:
            raise IndexError(f"row {rows[k]} outside [0, {size})")
    out = array(source.typecode, bytes(source.itemsize * n))
    if source.typecode == "d":
        doubles, double_out = source, out
        with nogil:
            for k in range(n):
                double_out[k] = doubles[rows[k]]
    elif source.typecode == "l":
        longs, long_out = source, out
        with nogil:
            for k in range(n):
                long_out[k] = longs[rows[k]]
    else:
        raise TypeError("take() handles 'd' and 'l' arrays")
    return out


# --- SPEC §3: offers -------------------------------------------------------------------------
cdef inline signed char _classify(const Plan* p, double delta) noexcept nogil:
    if delta < p.tier_floor:
        return REJECT_BELOW
    if delta <= p.tier_refresh_max:
        return REFRESH
    if delta <= p.tier_upgrade_max:
        return UPGRADE
    if delta <= p.tier_ceiling:
        return MAX_UPGRADE
    return REJECT_ABOVE


# The audited first-month payment, component by component (plan.py derives the formulas).
cdef inline double _first_principal(double rate, double amount, double growth, double divisor) noexcept nogil:
    return fabs(amount * growth / divisor - amount * rate)


cdef inline double _first_interest(double rate, double amount, double iva_factor) noexcept nogil:
    return fabs(amount * rate) * iva_factor


cdef inline double _first_payment(const Plan* p, double loan, double service_fee, int t) noexcept nogil:
    cdef double principal = _first_principal(p.rate_iva[t], loan, p.growth[t], p.divisor[t]) \
        + _first_principal(p.rate_iva[t], service_fee, p.growth[t], p.divisor[t]) \
        + p.kavak_principal[t] + p.insurance_principal[t]
    cdef double interest = _first_interest(p.rate[t], loan, p.iva_factor) \
        + _first_interest(p.rate[t], service_fee, p.iva_factor) + p.kavak_interest[t] + p.insurance_interest[t]
    return principal + interest + p.gps_monthly + p.gps_install


cdef Py_ssize_t _price_range(const Plan* p, const double[:] prices, Py_ssize_t first, Py_ssize_t last,
                             double[:] equity_out, double[:] sf_out, double[:] cxa_out, double[:] npv_out,
                             double[:] financed_out, double[:] payment_out, double[:] delta_out,
                             signed char[:] status_out) noexcept nogil:
    cdef Py_ssize_t car, slot
    cdef int t, n_terms = p.n_terms
    cdef double price, service_fee, cxa, equity, loan, payment, delta
    for car in range(first, last):
        if not _valid_price(prices[car]):
            return car
    for car in range(first, last):
        price = prices[car]
        service_fee = price * p.service_fee_pct
        cxa = price * p.cxa_pct
        equity = p.vehicle_equity + p.cac_bonus - cxa - p.gps_install
        loan = price - equity
        equity_out[car] = equity
        sf_out[car] = service_fee
        cxa_out[car] = cxa
        npv_out[car] = service_fee + cxa - p.npv_deduction - p.cac_bonus
        financed_out[car] = loan + service_fee + p.kavak_total + p.insurance
        for t in range(n_terms):
            slot = car * n_terms + t
            payment_out[slot] = 0.0
            delta_out[slot] = 0.0
            if equity < price * p.down[t]:
                status_out[slot] = REJECT_DOWN
            elif loan <= 0.0:
                status_out[slot] = REJECT_LOAN
            else:
                payment = _first_payment(p, loan, service_fee, t)
                delta = payment / p.current_payment - 1.0
                payment_out[slot] = payment
                delta_out[slot] = delta
                status_out[slot] = _classify(p, delta)
    return -1


def price_offers(plan, prices, Py_ssize_t first, Py_ssize_t last, out):
    """Price cars [first, last) into `out`. Returns -1, or the index of the first invalid price."""
    cdef Plan p
    _load_plan(plan, &p)
    cdef const double[:] price_view = prices
    cdef double[:] equity = out.equity, sf = out.service_fee, cxa = out.cxa, npv = out.npv
    cdef double[:] financed = out.financed, payment = out.payment, delta = out.delta
    cdef signed char[:] status = out.status
    cdef Py_ssize_t n = price_view.shape[0], result
    _check_range(first, last, n)
    if (equity.shape[0] < n or sf.shape[0] < n or cxa.shape[0] < n or npv.shape[0] < n
            or financed.shape[0] < n or payment.shape[0] < n * p.n_terms
            or delta.shape[0] < n * p.n_terms or status.shape[0] < n * p.n_terms):
        raise ValueError("output buffers are smaller than the batch")
    with nogil:
        result = _price_range(&p, price_view, first, last, equity, sf, cxa, npv, financed, payment, delta, status)
    return result


cdef struct RankKey:
    int tier
    double neg_npv
    double payment
    long car_rank
    int term_index
    long slot


cdef int _compare_keys(const void* a, const void* b) noexcept nogil:
    cdef const RankKey* x = <const RankKey*> a
    cdef const RankKey* y = <const RankKey*> b
    if x.tier != y.tier:
        return -1 if x.tier < y.tier else 1
    if x.neg_npv != y.neg_npv:
        return -1 if x.neg_npv < y.neg_npv else 1
    if x.payment != y.payment:
        return -1 if x.payment < y.payment else 1
    if x.car_rank != y.car_rank:
        return -1 if x.car_rank < y.car_rank else 1
    if x.term_index != y.term_index:
        return -1 if x.term_index < y.term_index else 1
    return 0


cdef void _sift_down(RankKey* heap, Py_ssize_t size, Py_ssize_t i) noexcept nogil:
    """Restore the heap below i: each key ranks after (is worse than) its children."""
    cdef Py_ssize_t child
    cdef RankKey item = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _compare_keys(&heap[child + 1], &heap[child]) > 0:
            child += 1
        if _compare_keys(&heap[child], &item) <= 0:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


cdef Py_ssize_t _keep_best(RankKey* keys, Py_ssize_t kept, Py_ssize_t limit) noexcept nogil:
    """Move the `limit` best keys to the front (in no order), keeping the worst of them at the
    root of a heap: one comparison for most of the others. Returns how many are kept."""
    cdef Py_ssize_t i
    if limit <= 0 or limit >= kept:
        return kept
    i = limit // 2
    while i > 0:
        i -= 1
        _sift_down(keys, limit, i)
    for i in range(limit, kept):
        if _compare_keys(&keys[i], &keys[0]) < 0:
            keys[0] = keys[i]
            _sift_down(keys, limit, 0)
    return limit


def rank_offers(plan, out, Py_ssize_t n_cars, car_rank, long tier_mask, Py_ssize_t limit=0):
    """Slots of the wanted offers in SPEC §3 order (the `limit` best only, when > 0), and the
    counts of all (see kernel_py.rank_offers)."""
    cdef int n_terms = len(plan.columns.terms)
    cdef const signed char[:] status = out.status
    cdef const double[:] npv = out.npv, payment = out.payment
    cdef const long[:] rank = car_rank
    cdef Py_ssize_t n_slots = n_cars * n_terms, slot, car, kept = 0, k
    cdef long[:] order_view
    cdef signed char s
    if status.shape[0] < n_slots or payment.shape[0] < n_slots or npv.shape[0] < n_cars or rank.shape[0] < n_cars:
        raise ValueError("buffers are smaller than the batch")
    counts = array("l", [0] * 8)
    cdef long[:] count_view = counts
    cdef Py_ssize_t wanted = 0
    with nogil:
        for slot in range(n_slots):
            s = status[slot]
            if s > 0:
                count_view[s] += 1
                if tier_mask & (1 << s):
                    wanted += 1
            else:
                count_view[3 - s] += 1
    # Sized to the offers kept, so it stays below malloc's mmap threshold in the common case.
    cdef RankKey* keys = <RankKey*> malloc(max(wanted, 1) * sizeof(RankKey))
    if keys == NULL:
        raise MemoryError()
    try:
        with nogil:
            for slot in range(n_slots):
                s = status[slot]
                if s > 0 and tier_mask & (1 << s):
                    car = slot // n_terms
                    keys[kept].tier = s
                    keys[kept].neg_npv = -npv[car]
                    keys[kept].payment = payment[slot]
                    keys[kept].car_rank = rank[car]
                    keys[kept].term_index = slot % n_terms
                    keys[kept].slot = slot
                    kept += 1
            kept = _keep_best(keys, kept, limit)
            qsort(keys, kept, sizeof(RankKey), _compare_keys)
        order = array("l", bytes(array("l").itemsize * kept))
        order_view = order
        for k in range(kept):
            order_view[k] = keys[k].slot
    finally:
        free(keys)
    return order, counts


# --- SPEC §3: amortization schedule ------------------------------------------------------------
cdef inline double _divisor(double rate, long periods, double growth) noexcept nogil:
    return <double>periods if rate == 0.0 else (growth - 1.0) / rate


cdef inline void _components(double rate, double amount, long periods, long elapsed, const double* powers,
                             double* principal, double* interest) noexcept nogil:
    # plan.components: numpy-financial's |PPMT| and |IPMT| of period elapsed + 1.
    cdef double payment = amount * powers[periods] / _divisor(rate, periods, powers[periods])
    cdef double owed = -(-amount * powers[elapsed] + payment * _divisor(rate, elapsed, powers[elapsed])) * rate
    principal[0] = fabs(payment - owed)
    interest[0] = fabs(owed)


def amortization(plan, int term_index, double price):
    """The schedule of one offer: len(SCHEDULE_COLUMNS) values per month, row after row."""
    cols = plan.columns
    cdef long n = cols.terms[term_index], ins_n = plan.insurance_months, p, q
    cdef double i = cols.monthly_rates[term_index], j = cols.monthly_rates_iva[term_index]
    cdef double iva = plan.iva_rate, iva_factor = plan.iva_factor, ins = plan.insurance
    cdef double gps_monthly = plan.gps_monthly
    cdef double gps_net = plan.gps_monthly_net, gps_first = plan.gps_install
    cdef double service_fee = price * plan.service_fee_pct
    cdef double loan = price - (plan.vehicle_equity + plan.cac_bonus - price * plan.cxa_pct - plan.gps_install)
    cdef double kavak = plan.kavak_total
    cdef double amounts[4]
    cdef double balances[4]
    cdef double principal[4]
    cdef double interest[4]
    cdef double start, gps_install, principal_sum, interest_sum, payment, unused
    cdef int c, width = len(SCHEDULE_COLUMNS)
    cdef long periods, elapsed
    if width != 12:
        raise ValueError("schedule layout changed")
    cdef long top = max(n, ins_n)
    powers_i, powers_j = array("d", growth_powers(i, top)), array("d", growth_powers(j, top))
    cdef const double[:] pi = powers_i, pj = powers_j
    rows = array("d", bytes(8 * n * width))
    cdef double[:] r = rows
    amounts[0] = loan; amounts[1] = service_fee; amounts[2] = kavak; amounts[3] = ins
    balances[0] = loan; balances[1] = service_fee; balances[2] = kavak; balances[3] = ins
    with nogil:
        for p in range(1, n + 1):
            q = (p - 1) % ins_n + 1
            if q == 1:
                balances[3] = ins
            start = balances[0] + balances[1] + balances[2] + balances[3]
            for c in range(4):
                periods, elapsed = (n, p - 1) if c < 3 else (ins_n, q - 1)
                _components(j, amounts[c], periods, elapsed, &pj[0], &principal[c], &unused)
                _components(i, amounts[c], periods, elapsed, &pi[0], &unused, &interest[c])
            gps_install = gps_first if p == 1 else 0.0
            principal_sum = principal[0] + principal[1] + principal[2] + principal[3]
            interest_sum = interest[0] + interest[1] + interest[2] + interest[3]
            payment = principal_sum + (interest[0] * iva_factor + interest[1] * iva_factor
                                       + interest[2] * iva_factor + interest[3] * iva_factor) \
                + gps_monthly + gps_install
            for c in range(4):
                balances[c] = balances[c] - principal[c]
                if balances[c] < 0.0:
                    balances[c] = 0.0
            c = (p - 1) * width
            r[c] = p
            r[c + 1] = start
            r[c + 2] = principal_sum + gps_install
            r[c + 3] = interest_sum
            r[c + 4] = gps_net
            r[c + 5] = (interest_sum + gps_net) * iva
            r[c + 6] = payment
            r[c + 7] = balances[0]
            r[c + 8] = balances[1]
            r[c + 9] = balances[2]
            r[c + 10] = balances[3]
            r[c + 11] = balances[0] + balances[1] + balances[2] + balances[3]
    return rows


# --- SPEC §3: minimum-subsidy search ------------------------------------------------------------
cdef struct Grid:
    const double* service_fees
    const double* cacs
    const double* cxas
    Py_ssize_t n_service_fees, n_cacs, n_cxas
    double max_payment_delta, min_npv, max_loan_to_value


cdef struct Attempt:
    signed char status
    long term
    double service_fee_pct, cac, cxa_pct, payment, delta, npv, financed
    long tried


cdef inline signed char _failed_gate(const Grid* g, double delta, double npv, double financed,
                                     double price) noexcept nogil:
    if delta > g.max_payment_delta:
        return SUB_DELTA
    if npv < g.min_npv:
        return SUB_NPV
    if financed / price > g.max_loan_to_value:
        return SUB_LTV
    return SUB_VIABLE


cdef struct LoanParts:
    # The part of a combination that depends on (term, CAC, CXA) only, reused for every service fee.
    bint priced                 # down payment met and loan > 0
    double cxa, loan, principal, interest


cdef Attempt _search_car(const Plan* p, const Grid* g, double price, LoanParts* parts) noexcept nogil:
    cdef Attempt best, attempt
    cdef bint have_best = False
    cdef long tried = 0
    cdef int t
    cdef Py_ssize_t a, b, c, k
    cdef double sf_pct, cac, cxa_pct, service_fee, sf_principal, sf_interest, equity, loan
    cdef double financed, payment, delta, margin
    cdef LoanParts* part
    cdef signed char gate
    # Until a combination can be priced, the answer is "down payment never met", amounts 0.
    best.status = SUB_DOWN
    best.term = 0
    best.service_fee_pct = 0.0
    best.cac = 0.0
    best.cxa_pct = 0.0
    best.payment = 0.0
    best.delta = 0.0
    best.npv = 0.0
    best.financed = 0.0
    for t in range(p.n_terms):
        for b in range(g.n_cacs):
            for c in range(g.n_cxas):
                part = &parts[b * g.n_cxas + c]
                part.cxa = price * g.cxas[c]
                equity = p.vehicle_equity + g.cacs[b] - part.cxa - p.gps_install
                loan = price - equity
                part.priced = not (equity < price * p.down[t]) and loan > 0.0
                part.loan = loan
                part.principal = _first_principal(p.rate_iva[t], loan, p.growth[t], p.divisor[t])
                part.interest = _first_interest(p.rate[t], loan, p.iva_factor)
        for a in range(g.n_service_fees):
            sf_pct = g.service_fees[a]
            service_fee = price * sf_pct
            sf_principal = _first_principal(p.rate_iva[t], service_fee, p.growth[t], p.divisor[t])
            sf_interest = _first_interest(p.rate[t], service_fee, p.iva_factor)
            for b in range(g.n_cacs):
                cac = g.cacs[b]
                for c in range(g.n_cxas):
                    tried += 1
                    part = &parts[b * g.n_cxas + c]
                    if not part.priced:
                        continue
                    cxa_pct = g.cxas[c]
                    financed = part.loan + service_fee + p.kavak_total + p.insurance
                    # _first_payment, term by term in the same order, with the loan and fee parts reused.
                    payment = (part.principal + sf_principal + p.kavak_principal[t] + p.insurance_principal[t]) \
                        + (part.interest + sf_interest + p.kavak_interest[t] + p.insurance_interest[t]) \
                        + p.gps_monthly + p.gps_install
                    delta = payment / p.current_payment - 1.0
                    margin = service_fee + part.cxa - p.npv_deduction - cac
                    gate = _failed_gate(g, delta, margin, financed, price)
                    if gate == SUB_VIABLE or not have_best or fabs(delta) < fabs(best.delta):
                        attempt.status = gate
                        attempt.term = p.terms[t]
                        attempt.service_fee_pct = sf_pct
                        attempt.cac = cac
                        attempt.cxa_pct = cxa_pct
                        attempt.payment = payment
                        attempt.delta = delta
                        attempt.npv = margin
                        attempt.financed = financed
                        if gate == SUB_VIABLE:
                            attempt.tried = tried
                            return attempt
                        best = attempt
                        have_best = True
    best.tried = tried
    return best


def subsidy_search(splan, prices, Py_ssize_t first, Py_ssize_t last, out):
    """Search cars [first, last) into `out`. Returns -1, or the index of the first invalid price."""
    cdef Plan p
    _load_plan(splan.offer, &p)
    cdef const double[:] sf_values = splan.service_fee_values, cac_values = splan.cac_values
    cdef const double[:] cxa_values = splan.cxa_values
    cdef Grid g
    if sf_values.shape[0] < 1 or cac_values.shape[0] < 1 or cxa_values.shape[0] < 1:
        raise ValueError("subsidy grid: every axis needs at least one value")
    g.service_fees = &sf_values[0]
    g.cacs = &cac_values[0]
    g.cxas = &cxa_values[0]
    g.n_service_fees = sf_values.shape[0]
    g.n_cacs = cac_values.shape[0]
    g.n_cxas = cxa_values.shape[0]
    g.max_payment_delta = splan.max_payment_delta
    g.min_npv = splan.min_npv
    g.max_loan_to_value = splan.max_loan_to_value
    cdef const double[:] price_view = prices
    cdef signed char[:] status = out.status
    cdef long[:] term = out.term, iterations = out.iterations
    cdef double[:] sf_pct = out.service_fee_pct, cac = out.cac_bonus, cxa_pct = out.cxa_pct
    cdef double[:] payment = out.payment, delta = out.delta, npv = out.npv, financed = out.financed
    cdef Py_ssize_t n = price_view.shape[0], car, invalid = -1
    cdef Attempt result
    cdef LoanParts* parts = <LoanParts*> malloc(g.n_cacs * g.n_cxas * sizeof(LoanParts))
    if parts == NULL:
        raise MemoryError()
    _check_range(first, last, n)
    for view_len in (status.shape[0], term.shape[0], iterations.shape[0], sf_pct.shape[0], cac.shape[0],
                     cxa_pct.shape[0], payment.shape[0], delta.shape[0], npv.shape[0], financed.shape[0]):
        if view_len < n:
            raise ValueError("output buffers are smaller than the batch")
    try:
        with nogil:
            for car in range(first, last):
                if not _valid_price(price_view[car]):
                    invalid = car
                    break
            if invalid < 0:
                for car in range(first, last):
                    result = _search_car(&p, &g, price_view[car], parts)
                    status[car] = result.status
                    term[car] = result.term
                    sf_pct[car] = result.service_fee_pct
                    cac[car] = result.cac
                    cxa_pct[car] = result.cxa_pct
                    payment[car] = result.payment
                    delta[car] = result.delta
                    npv[car] = result.npv
                    financed[car] = result.financed
                    iterations[car] = result.tried
    finally:
        free(parts)
    return invalid


# --- protobuf wire encoding of ranked offers (see wire_py.py, the twin) ------------------------
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef inline Py_ssize_t _varint_size(uint64_t value) noexcept nogil:
    cdef Py_ssize_t size = 1
    while value > 0x7F:
        value >>= 7
        size += 1
    return size


cdef inline char* _put_varint(char* p, uint64_t value) noexcept nogil:
    while value > 0x7F:
        p[0] = <char>((value & 0x7F) | 0x80)
        p += 1
        value >>= 7
    p[0] = <char>value
    return p + 1


cdef inline bint _is_default(double value) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &value, 8)
    return bits == 0  # +0.0 only: proto3 writes -0.0


cdef inline char* _put_double(char* p, int number, double value) noexcept nogil:
    if _is_default(value):
        return p
    p[0] = <char>(number << 3 | 1)
    memcpy(p + 1, &value, 8)  # little-endian, as the wire wants (x86-64 and arm64 are)
    return p + 9


def encode_offers(plan, out, list names, rows, order, Py_ssize_t first, Py_ssize_t last, int field_number):
    """The offers ranked at positions [first, last), each as field `field_number` (length-delimited);
    the id of car k is names[rows[k]], or names[k] when `rows` is None."""
    cols = plan.columns
    cdef int n_terms = len(cols.terms), t, i
    cdef const long[:] order_view = order
    cdef const long[:] terms = cols.terms
    cdef const double[:] rates = cols.annual_rates
    cdef const signed char[:] status = out.status
    cdef const double[:] payment = out.payment, delta = out.delta, financed = out.financed
    cdef const double[:] equity = out.equity, service_fee = out.service_fee, cxa = out.cxa, npv = out.npv
    cdef double kavak = plan.kavak_total, insurance = plan.insurance
    cdef double gps_install = plan.gps_install, gps_monthly = plan.gps_monthly
    if first < 0 or last > order_view.shape[0] or first > last or not 1 <= field_number <= 15:
        raise IndexError("positions or field number out of range")
    cdef Py_ssize_t count = last - first, k, slot, car, name, id_length, total = 0, body
    cdef Py_ssize_t n_names = len(names)
    cdef const long[:] row_view = rows if rows is not None else None
    cdef Py_ssize_t* sizes = <Py_ssize_t*> malloc(max(count, 1) * sizeof(Py_ssize_t))
    cdef const char** ids = <const char**> malloc(max(count, 1) * sizeof(char*))
    cdef Py_ssize_t* id_lengths = <Py_ssize_t*> malloc(max(count, 1) * sizeof(Py_ssize_t))
    cdef double doubles[12]
    cdef char* p
    if sizes == NULL or ids == NULL or id_lengths == NULL:
        free(sizes); free(ids); free(id_lengths)
        raise MemoryError()
    try:
        # Pass 1: the size of every offer (ids are read with the GIL; UTF-8 is cached by str).
        for k in range(count):
            slot = order_view[first + k]
            car = slot // n_terms
            t = slot % n_terms
            name = car if rows is None else row_view[car]
            if not 0 <= name < n_names:
                raise IndexError("car id row out of range")
            ids[k] = PyUnicode_AsUTF8AndSize(names[name], &id_length)
            id_lengths[k] = id_length
            body = (1 + _varint_size(id_length) + id_length) if id_length else 0
            body += 1 + _varint_size(<uint64_t>terms[t]) if terms[t] else 0
            body += 2 if status[slot] else 0
            doubles[0] = payment[slot]
            doubles[1] = delta[slot]
            doubles[2] = financed[car]
            doubles[3] = equity[car]
            doubles[4] = service_fee[car]
            doubles[5] = cxa[car]
            doubles[6] = kavak
            doubles[7] = insurance
            doubles[8] = gps_install
            doubles[9] = gps_monthly
            doubles[10] = npv[car]
            doubles[11] = rates[t]
            for i in range(12):
                if not _is_default(doubles[i]):
                    body += 9
            sizes[k] = body
            total += 1 + _varint_size(body) + body
        encoded = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(encoded)
        # Pass 2: write.
        for k in range(count):
            slot = order_view[first + k]
            car = slot // n_terms
            t = slot % n_terms
            p[0] = <char>(field_number << 3 | 2)
            p = _put_varint(p + 1, sizes[k])
            if id_lengths[k]:
                p[0] = 0x0A
                p = _put_varint(p + 1, id_lengths[k])
                memcpy(p, ids[k], id_lengths[k])
                p += id_lengths[k]
            if terms[t]:
                p[0] = 0x10
                p = _put_varint(p + 1, <uint64_t>terms[t])
            if status[slot]:
                p[0] = 0x18
                p[1] = <char>status[slot]
                p += 2
            p = _put_double(p, 4, payment[slot])
            p = _put_double(p, 5, delta[slot])
            p = _put_double(p, 6, financed[car])
            p = _put_double(p, 7, equity[car])
            p = _put_double(p, 8, service_fee[car])
            p = _put_double(p, 9, cxa[car])
            p = _put_double(p, 10, kavak)
            p = _put_double(p, 11, insurance)
            p = _put_double(p, 12, gps_install)
            p = _put_double(p, 13, gps_monthly)
            p = _put_double(p, 14, npv[car])
            p = _put_double(p, 15, rates[t])
        if p - PyBytes_AS_STRING(encoded) != total:
            raise AssertionError("offer encoding size mismatch")
        return encoded
    finally:
        free(sizes)
        free(ids)
        free(id_lengths)
