"""Python client of the Trade-Up Engine: `OfferClient` and the `tradeup` CLI."""
from .library import TIERS, ErrorDetails, LiveOffers, OfferClient, error_details, offer_request

__all__ = ["ErrorDetails", "LiveOffers", "OfferClient", "TIERS", "error_details", "offer_request"]
