import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_ext import IMPLEMENTATIONS, Engine, load_kernel  # noqa: E402


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda name: f"{name}-kernel")
def kernel(request):
    return load_kernel(request.param)


@pytest.fixture
def engine(kernel):
    engine = Engine(kernel, workers=2, offer_chunk_cars=64, subsidy_chunk_cars=4)
    yield engine
    engine.close()


def pytest_report_header(config):
    return f"engine implementation for the server: {os.environ.get('TRADEUP_ENGINE') or 'compiled'}"
