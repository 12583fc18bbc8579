"""Protobuf wire encoding of ranked offers, straight from the engine's columns (pure twin).

Building one Python `Offer` message per offer costs more than pricing it, so the server asks
the kernel for the bytes of the repeated `tradeup.v1.Offer` field instead; clients still
receive ordinary messages. The output equals `SerializeToString()` of the same messages
(tests check it); `_kernel.pyx` has the compiled version.

Offer fields (protos/tradeup/v1/offers.proto): 1 car_id, 2 term, 3 tier, 4..15 doubles in the
order of OFFER_DOUBLES. proto3 leaves out zero values, and so does this.
"""
from __future__ import annotations

import struct

OFFER_DOUBLES = ("monthly_payment", "payment_delta", "loan_amount", "effective_equity", "service_fee_amount",
                 "cxa_amount", "kavak_total_amount", "insurance_amount", "gps_install_fee", "gps_monthly_fee",
                 "npv", "interest_rate")
_DOUBLE = struct.Struct("<d")


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_header(field_number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field of `length` bytes."""
    return varint(field_number << 3 | 2) + varint(length)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return field_header(field_number, len(payload)) + payload


def _offer(car_id: bytes, term: int, tier: int, doubles: tuple[float, ...]) -> bytes:
    body = bytearray()
    if car_id:
        body += length_delimited(1, car_id)
    if term:
        body += varint(1 << 4) + varint(term)  # field 2, varint (a term is positive)
    if tier:
        body += varint(3 << 3) + varint(tier)
    for number, value in enumerate(doubles, start=4):
        packed = _DOUBLE.pack(value)
        if packed != bytes(8):  # +0.0 is the default and is left out; -0.0 is not
            body += varint(number << 3 | 1) + packed
    return bytes(body)


def encode_offers(plan, out, names, rows, order, first: int, last: int, field_number: int) -> bytes:
    """The offers ranked at positions [first, last), each as field `field_number` (length-delimited);
    the id of car k is names[rows[k]], or names[k] when `rows` is None."""
    terms, rates = plan.columns.terms, plan.columns.annual_rates
    n_terms = len(terms)
    encoded = bytearray()
    for position in range(first, last):
        slot = order[position]
        car, t = divmod(slot, n_terms)
        doubles = (out.payment[slot], out.delta[slot], out.financed[car], out.equity[car], out.service_fee[car],
                   out.cxa[car], plan.kavak_total, plan.insurance, plan.gps_install, plan.gps_monthly,
                   out.npv[car], rates[t])
        encoded += length_delimited(field_number, _offer(names[car if rows is None else rows[car]].encode(), terms[t], out.status[slot], doubles))
    return bytes(encoded)
