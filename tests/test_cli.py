"""The CLI, run as a subprocess against a real server."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(server, *args, token=True):
    env = {**os.environ, "TRADEUP_TARGET": server.target}
    env.pop("TRADEUP_ADMIN_TOKEN", None)
    if token:
        env["TRADEUP_ADMIN_TOKEN"] = "test-admin-token"
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_offers_table_and_json(server):
    table = run_cli(server, "offers", "C0001", "--per-tier", "2")
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("Customer C0001: 500 cars evaluated, 620 offers")
    assert "Refresh: 21 offers, best 2 shown" in table.stdout and "Max Upgrade: 510 offers" in table.stdout
    data = json.loads(run_cli(server, "offers", "C0001", "--json", "--max-offers", "3").stdout)
    assert data["summary"]["total_offers"] == 620
    assert sum(len(g.get("offers", [])) for g in data["groups"]) == 3


def test_bulk_subsidy_amortization_health(server):
    bulk = run_cli(server, "bulk", "C0001", "NOPE", "--progress")
    assert bulk.returncode == 1  # one customer failed
    assert "C0001: 620 offers" in bulk.stdout and "NOPE: NOT_FOUND" in bulk.stdout
    assert "2/2 customers, 1 errors" in bulk.stderr
    subsidy = run_cli(server, "subsidy", "C0001", "--cars", "INV01895", "--all")
    assert subsidy.returncode == 0 and "INV01895   VIABLE" in subsidy.stdout and "3092" in subsidy.stdout
    schedule = run_cli(server, "amortization", "C0043", "--car", "INV01835", "--term", "48")
    assert schedule.returncode == 0 and "7,298.79 MXN in month 1" in schedule.stdout
    assert len([line for line in schedule.stdout.splitlines() if line.strip()[:2].strip().isdigit()]) == 48
    health = run_cli(server, "health")
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"


def test_admin_commands_and_errors(server):
    status = json.loads(run_cli(server, "status").stdout)
    assert status["database_reachable"] is True and status["circuit_state"] == "closed"
    config = json.loads(run_cli(server, "config").stdout)
    assert config["server"]["admin_token"] == "***"
    denied = run_cli(server, "config", token=False)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
    bad = run_cli(server, "offers", "C0001", "--rate", "250")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: overrides.interest_rate" in bad.stderr


def test_set_params_then_history(server):
    changed = run_cli(server, "set-params", '{"fees": {"cac_bonus": 250}}', "--by", "ana")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["fees"]["cac_bonus"] == 250
    history = run_cli(server, "history", "--prefix", "business.fees.")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[0] == "1 configuration changes, newest first"
    assert " UTC  ana  business.fees.cac_bonus: null -> 250.0" in lines[1]
    assert json.loads(run_cli(server, "history", "--json").stdout)[0]["changed_by"] == "ana"
    sources = run_cli(server, "config", "--sources").stdout.splitlines()
    assert sources[0].startswith("configuration version ")
    assert [line.split() for line in sources if "fees.cac_bonus" in line or "server.port " in line] == [
        ["business.fees.cac_bonus", "database"], ["server.port", "environment"]]
