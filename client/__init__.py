"""Python client of the Trade-Up Engine: `OfferClient` and the `tradeup` CLI."""
from .library import TIERS, OfferClient, offer_request

__all__ = ["OfferClient", "TIERS", "offer_request"]
