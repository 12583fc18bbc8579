"""Trade-up pricing engine: the compiled kernel and its pure-Python twin behind one API.

The implementation is chosen here and only here: the compiled kernel by default, the
twin only when asked for (`TRADEUP_ENGINE=python`). A missing compiled kernel is an error
that says how to build it, never a silent slow fallback.
"""
from __future__ import annotations

import importlib
import os

from .constants import ALL_TIERS, TIER_NAMES
from .engine import CarIds, Engine, Offer, OfferSet, ScheduleRow, SubsidyResult
from .errors import EngineInputError, KernelUnavailableError
from .params import CustomerTerms, Fees, PricingParams, SubsidyGrid, TierBounds

IMPLEMENTATIONS = ("compiled", "python")


def load_kernel(name: str | None = None):
    """The kernel module named by `name`, else by TRADEUP_ENGINE, else the compiled one."""
    name = (name or os.environ.get("TRADEUP_ENGINE") or "compiled").strip().lower()
    if name == "python":
        return importlib.import_module(".kernel_py", __name__)
    if name != "compiled":
        raise EngineInputError("TRADEUP_ENGINE", f"must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    try:
        return importlib.import_module("._kernel", __name__)
    except ImportError as exc:
        raise KernelUnavailableError(
            f"the compiled engine kernel is not built ({exc}). Build it with `pip install -e .` "
            "(or `make build`), or set TRADEUP_ENGINE=python to run the pure-Python twin") from exc


__all__ = [
    "ALL_TIERS", "TIER_NAMES", "CarIds", "CustomerTerms", "Engine", "EngineInputError", "Fees", "IMPLEMENTATIONS",
    "KernelUnavailableError", "Offer", "OfferSet", "PricingParams", "ScheduleRow", "SubsidyGrid",
    "SubsidyResult", "TierBounds", "load_kernel",
]
