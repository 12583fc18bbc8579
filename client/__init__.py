"""Python client of the Trade-Up Engine: `OfferClient` and the `tradeup` CLI."""
from .library import TIERS, LiveOffers, OfferClient, offer_request

__all__ = ["LiveOffers", "OfferClient", "TIERS", "offer_request"]
