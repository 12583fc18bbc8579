"""The operators' tools against a real server, through reflection (no .proto files): a short ghz
run, a grpcurl call and grpc_health_probe. `make tools` installs them (CI does)."""
from __future__ import annotations

import json
import subprocess

import pytest

import golden_data as golden
from conftest import tool


def test_ghz_smoke_run_has_no_errors(server, tmp_path):
    report = tmp_path / "ghz.json"
    requests = [{"customer_id": c, "options": {"max_offers": 20}} for c in golden.customer_ids()]  # round-robin
    subprocess.run([tool("ghz"), "--insecure", "--call", "tradeup.v1.OfferService/GenerateOffers",
                    "-d", json.dumps(requests),
                    "-n", "300", "-c", "8", "--timeout", "20s", "--format", "json", "-o", str(report), server.target],
                   check=True, timeout=120, capture_output=True)
    result = json.loads(report.read_text())
    assert result["count"] == 300
    assert result["statusCodeDistribution"] == {"OK": 300}
    assert not result.get("errorDistribution")


def test_grpcurl_gets_a_well_formed_response(server):
    customer = golden.customer_with_offers(3)
    record = golden.offers_of(customer)
    request = json.dumps({"customer_id": customer, "options": {"max_offers": 3}})
    out = subprocess.run([tool("grpcurl"), "-plaintext", "-d", request,
                          server.target, "tradeup.v1.OfferService/GenerateOffers"],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    response = json.loads(out)
    assert response["summary"]["total_offers"] == len(record["offers"])
    assert response["summary"]["cars_evaluated"] == len(record["cars"])
    best_tier = next(t for t in ("Refresh", "Upgrade", "Max Upgrade") if any(o["tier"] == t for o in record["offers"]))
    offers = [o for group in response["groups"] for o in group.get("offers", [])]
    assert len(offers) == 3 and offers[0]["monthly_payment"] > 0
    assert offers[0]["tier"] == "TIER_" + best_tier.upper().replace(" ", "_")
    listing = subprocess.run([tool("grpcurl"), "-plaintext", server.target, "list"], check=True, timeout=60,
                             capture_output=True, text=True).stdout.split()
    assert "tradeup.v1.OfferService" in listing and "grpc.health.v1.Health" in listing


def test_grpc_health_probe(server):
    for service in ("", "tradeup.v1.OfferService"):
        probe = subprocess.run([tool("grpc-health-probe"), "-addr", server.target, "-service", service],
                               timeout=60, capture_output=True, text=True)
        assert probe.returncode == 0 and "SERVING" in probe.stdout + probe.stderr
