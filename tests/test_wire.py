"""The kernels' wire encoding equals protobuf's own serialization of the same offers."""
from array import array
from dataclasses import asdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import golden_data as golden
from engine_ext import CarIds, CustomerTerms, Engine, Fees, PricingParams, load_kernel
from engine_ext.wire_py import varint
from protos.tradeup.v1 import offers_pb2 as pb

TIERS = {"Refresh": pb.TIER_REFRESH, "Upgrade": pb.TIER_UPGRADE, "Max Upgrade": pb.TIER_MAX_UPGRADE}


def reference(offers, first, last):
    """Messages built one by one from the engine's Offer objects, serialized by protobuf."""
    messages = [pb.Offer(**{**asdict(offers.offer(k)), "tier": TIERS[offers.offer(k).tier]}) for k in range(first, last)]
    return pb.StreamOffersResponse(offers=messages).SerializeToString()


@pytest.mark.parametrize("record", golden.spread(golden.offers()), ids=lambda r: r["customer_id"])
def test_golden_offers_encode_like_protobuf(engine, record):
    customer = golden.terms_of(golden.customers()[record["customer_id"]])
    prices = [golden.inventory()[car]["car_price"] for car in record["cars"]]
    offers = engine.price(customer, record["cars"], prices, golden.params())
    assert offers.encode(0, len(offers), 1) == reference(offers, 0, len(offers))
    middle = len(offers) // 2
    assert offers.encode(middle, len(offers), 1) == reference(offers, middle, len(offers))
    assert offers.encode(len(offers), len(offers), 1) == b""
    parsed = pb.TierGroup.FromString(offers.encode(0, len(offers), 3))
    assert [o.car_id for o in parsed.offers] == [o.car_id for o in offers]


@pytest.mark.parametrize("record", golden.spread([r for r in golden.offers() if r["offers"]])[:5],
                         ids=lambda r: r["customer_id"])
def test_cars_taken_by_row_encode_as_their_ids(record):
    """The prefilter hands the engine rows of the snapshot's ids (CarIds), not a list of them."""
    customer = golden.terms_of(golden.customers()[record["customer_id"]])
    snapshot_ids = sorted(golden.inventory(), reverse=True)
    rows = array("l", [snapshot_ids.index(car) for car in record["cars"]])
    prices = [golden.inventory()[car]["car_price"] for car in record["cars"]]
    by_row = CarIds(snapshot_ids, rows)
    assert list(by_row) == record["cars"] and list(by_row[1:3]) == record["cars"][1:3]
    assert by_row == record["cars"] == by_row and by_row != record["cars"][1:]
    for kernel in (load_kernel("compiled"), load_kernel("python")):
        engine = Engine(kernel, workers=1)
        offers = engine.price(customer, by_row, prices, golden.params())
        assert offers.encode(0, len(offers), 1) == engine.price(customer, record["cars"], prices,
                                                               golden.params()).encode(0, len(offers), 1)
        assert offers.encode(0, len(offers), 1) == reference(offers, 0, len(offers))
    beyond = Engine(load_kernel("compiled"), workers=1).price(customer, CarIds([], rows), prices, golden.params(),
                                                             car_rank=range(len(rows)))
    with pytest.raises(IndexError, match="row"):  # a row beyond the names is refused, never read
        beyond.encode(0, len(beyond), 1)


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 0.1), st.sampled_from([0.0, -0.0, 25_000.0]), st.sampled_from([0.0, 10_999.0]),
       st.sampled_from([0.0, 750.0]), st.sampled_from(["A1", "Z", "unknown"]),
       st.text(min_size=0, max_size=20), st.floats(2_000, 20_000))
def test_edge_values_encode_like_protobuf(fee, kavak, insurance, gps, profile, car_id, payment):
    """Zero amounts are left out as protobuf leaves them out (-0.0 is kept); any unicode id."""
    params = PricingParams(fees=Fees(service_fee_pct=fee, cxa_pct=fee, kavak_total_amount=abs(kavak),
                                     insurance_amount=insurance, gps_installation_fee=gps, gps_monthly_fee=gps))
    customer = CustomerTerms(payment, 150_000.0, profile, PricingParams().profile_index(profile))
    for kernel in (load_kernel("compiled"), load_kernel("python")):
        offers = Engine(kernel, workers=1).price(customer, [car_id, car_id + "b"], [260_000.0, 300_000.0], params)
        if str(kavak) == "-0.0":
            object.__setattr__(offers.plan, "kavak_total", -0.0)  # a negative zero must still be written
        assert offers.encode(0, len(offers), 1) == reference(offers, 0, len(offers))


def test_varint():
    for value in (0, 1, 127, 128, 300, 2 ** 32, 2 ** 63):
        encoded = varint(value)
        decoded, shift = 0, 0
        for byte in encoded:
            decoded |= (byte & 0x7F) << shift
            shift += 7
        assert decoded == value and all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80
