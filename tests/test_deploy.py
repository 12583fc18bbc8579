"""The deployment files in deploy/ agree with the service: ports, probes, and every TRADEUP_*
variable is a key of the configuration schema. (They are parsed here, not run: no container
engine is needed for the tests.)"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from server.config import SECTIONS, ServerSettings
from server.rpc.server import OFFER_SERVICE

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PORT = ServerSettings.port
VARIABLE = re.compile(r"\bTRADEUP_[A-Z0-9_]+\b")


def schema_variables() -> set[str]:
    names = {"TRADEUP_CONFIG_FILES"}
    for cls in SECTIONS.values():
        for f in fields(cls):
            names.add(f.metadata["env"])
            if f.metadata["secret"]:
                names.add(f.metadata["env"] + "_FILE")
    return names


def manifests() -> dict[str, dict]:
    documents = [d for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in documents}


def test_every_variable_is_a_configuration_key():
    known = schema_variables()
    for path in [DEPLOY / "Dockerfile", DEPLOY / "docker-compose.yml", *(DEPLOY / "k8s").glob("*.yaml")]:
        unknown = set(VARIABLE.findall(path.read_text())) - known
        assert not unknown, f"{path.name} sets variables the service does not read: {sorted(unknown)}"


def test_dockerfile_builds_the_kernel_and_runs_as_a_user():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build" and "COPY --from=build" in text
    assert re.search(r"^USER (\d+)", text, re.M) and int(re.search(r"^USER (\d+)", text, re.M).group(1)) > 0
    assert f"EXPOSE {PORT} 9464" in text and f"TRADEUP_PORT={PORT}" in text
    assert "engine_ext" in text


def test_kubernetes_probes_ports_and_secret():
    objects = manifests()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container["env"]}
    assert ports["grpc"] == int(env["TRADEUP_PORT"]["value"]) == PORT
    assert ports["metrics"] == int(env["TRADEUP_METRICS_PORT"]["value"])
    # Liveness: the process (overall health ""); readiness: the offer service (the database).
    assert container["livenessProbe"]["grpc"] == {"port": PORT, "service": ""}
    assert container["readinessProbe"]["grpc"] == {"port": PORT, "service": OFFER_SERVICE}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
    assert pod["terminationGracePeriodSeconds"] > float(env["TRADEUP_GRACE_SECONDS"]["value"])
    secret = objects["Secret"]
    for item in env.values():
        reference = item.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            assert reference["name"] == secret["metadata"]["name"] and reference["key"] in secret["stringData"]
    assert {"TRADEUP_DATABASE_URL", "TRADEUP_ADMIN_TOKEN"} <= {n for n, e in env.items() if "valueFrom" in e}
    service = objects["Service"]["spec"]
    assert service["clusterIP"] == "None"  # headless: clients balance per call with round_robin
    assert {p["name"]: p["port"] for p in service["ports"]}["grpc"] == PORT
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    assert service["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]


def test_compose_runs_two_replicas_on_mariadb_and_redis_and_a_ghz_job():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    tradeup = services["tradeup"]
    assert tradeup["deploy"]["replicas"] == 2
    env = tradeup["environment"]
    assert env["TRADEUP_DATABASE_HOST"] in services and env["TRADEUP_REDIS_URL"].startswith("redis://redis:")
    assert int(env["TRADEUP_PORT"]) == PORT and tradeup["ports"] == [f"{PORT}-{PORT + 1}:{PORT}"]
    assert set(tradeup["depends_on"]) == {"seed", "redis"} and "mariadb" in services["seed"]["depends_on"]
    assert OFFER_SERVICE in tradeup["healthcheck"]["test"]
    for name in ("TRADEUP_DATABASE_PASSWORD_FILE", "TRADEUP_ADMIN_TOKEN_FILE"):
        assert env[name].removeprefix("/run/secrets/") in compose["secrets"]
    ghz = " ".join(services["ghz"]["command"])
    assert "round_robin" in ghz and f"tradeup:{PORT}" in ghz and "ghz@v0.120.0" in ghz
