"""The chaos run of tests/chaos.py, briefly (about two minutes in all, start-up included): two
instances of two processes on MariaDB and Redis under callers of every kind while parameters
change, cars are sold, repriced and deleted, the database restarts, Redis dies and an instance
is stopped and started again. `make chaos` runs it for ten minutes."""
from __future__ import annotations

import os

import pytest

from tests.chaos import available, run

CHAOS_SECONDS = 70.0


@pytest.mark.timeout(290)
def test_the_fleet_stays_correct_and_responsive_under_chaos(tmp_path, capsys):
    why = available()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    report = run(CHAOS_SECONDS, tmp_path)
    with capsys.disabled():
        print("\n" + report.text())
    assert not report.failures, "\n".join(report.failures)
