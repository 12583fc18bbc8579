"""Rate limiting per caller and TLS (server-only and mutual), against real servers."""
from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

import golden_data as golden
from client import OfferClient
from conftest import start_server
from server.config import ConfigError, load_settings
from server.services.ratelimit import TokenBuckets


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_token_buckets():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # callers are independent
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    clock.now += 100
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, not beyond


@pytest.fixture
def limited(golden_database, tmp_path):
    running = start_server(golden_database[1],
                           TRADEUP_RATE_LIMIT_PER_SECOND=2, TRADEUP_RATE_LIMIT_BURST=3,
                           TRADEUP_RATE_LIMIT_KEY="x-caller-id")
    yield running
    running.stop()


def test_rate_limit_per_caller(limited):
    as_a = (("x-caller-id", "service-a"),)
    customer = golden.customer_ids()[0]
    for _ in range(3):
        limited.client.generate_offers(customer_id=customer, max_offers=1, metadata=as_a)
    for call in (lambda: limited.client.generate_offers(customer_id=customer, max_offers=1, metadata=as_a),
                 lambda: limited.client.search_inventory("audi", metadata=as_a)):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_ms = int(dict(err.value.trailing_metadata())["retry-after-ms"])
    assert 0 < retry_ms <= 500
    # Another caller, health checks and streams of another caller go on.
    limited.client.generate_offers(customer_id=customer, max_offers=1, metadata=(("x-caller-id", "service-b"),))
    assert all(limited.client.health() == "SERVING" for _ in range(10))
    time.sleep(retry_ms / 1000 + 0.05)
    limited.client.generate_offers(customer_id=customer, max_offers=1, metadata=as_a)
    with pytest.raises(grpc.RpcError) as err:
        list(limited.client.stream_offers(customer_id=customer, metadata=as_a))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_without_a_key_the_peer_is_the_caller(golden_database, tmp_path):
    running = start_server(golden_database[1],
                           TRADEUP_RATE_LIMIT_PER_SECOND=1, TRADEUP_RATE_LIMIT_BURST=2)
    try:
        codes = []
        for _ in range(4):
            try:
                running.client.generate_offers(customer_id=golden.customer_ids()[0], max_offers=1,
                                               metadata=(("x-caller-id", "x"),))
                codes.append("OK")
            except grpc.RpcError as err:
                codes.append(err.code().name)
        assert codes[:2] == ["OK", "OK"] and "RESOURCE_EXHAUSTED" in codes[2:]
    finally:
        running.stop()


def make_certificates(directory):
    """A CA, a server certificate for localhost and a client certificate, with openssl."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=Test CA", "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("server", "client"):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (directory / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")
    return {name: directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def test_tls_and_mutual_tls(golden_database, tmp_path):
    certs = make_certificates(tmp_path)
    env = golden_database[1]
    read = lambda name: certs[name].read_bytes()  # noqa: E731
    running = start_server(env, TRADEUP_TLS_CERT_FILE=certs["server.pem"], TRADEUP_TLS_KEY_FILE=certs["server.key"])
    target = f"localhost:{running.app.port}"
    customer = golden.customer_with_offers()
    try:
        with OfferClient(target, timeout=5, root_certificates=read("ca.pem")) as secure:
            assert secure.generate_offers(customer_id=customer, max_offers=1).summary.total_offers == \
                len(golden.offers_of(customer)["offers"])
        with OfferClient(target, timeout=2) as plaintext:
            with pytest.raises(grpc.RpcError) as err:
                plaintext.generate_offers(customer_id=customer)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        cli = subprocess.run([sys.executable, "-m", "client", "--target", target, "--ca", str(certs["ca.pem"]), "health"],
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and cli.stdout.strip() == "SERVING"
    finally:
        running.stop()
    running = start_server(env, TRADEUP_TLS_CERT_FILE=certs["server.pem"], TRADEUP_TLS_KEY_FILE=certs["server.key"],
                           TRADEUP_TLS_CLIENT_CA_FILE=certs["ca.pem"])
    target = f"localhost:{running.app.port}"
    try:
        with OfferClient(target, timeout=5, root_certificates=read("ca.pem"), private_key=read("client.key"),
                         certificate_chain=read("client.pem")) as mutual:
            assert mutual.health() == "SERVING"
        with OfferClient(target, timeout=2, root_certificates=read("ca.pem")) as anonymous:
            with pytest.raises(grpc.RpcError) as err:
                anonymous.health()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_tls_configuration_is_checked(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError) as err:
        load_settings({"TRADEUP_TLS_CERT_FILE": str(cert)})
    assert err.value.key == "server.tls_key_file"
    with pytest.raises(ConfigError) as err:
        load_settings({"TRADEUP_TLS_CERT_FILE": str(cert), "TRADEUP_TLS_KEY_FILE": str(tmp_path / "missing.key")})
    assert err.value.key == "server.tls_key_file"
