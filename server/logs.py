"""Logging set-up: one line per record with the request id of the call being served."""
from __future__ import annotations

import logging
import sys

from .rpc.interceptors import install_request_id_records


def configure_logging(level: str) -> None:
    install_request_id_records()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
