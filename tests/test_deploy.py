"""The deployment files in deploy/ agree with the service: ports, probes, and every TRADEUP_*
variable is a key of the configuration schema. The Kubernetes manifests are read as the API reads
them (kube-check: decoded strictly into the k8s.io/api types), which covers what `podman kube
play` cannot run: the gRPC probes, the headless Service, the disruption budget. They run in
tests/test_deploy_run.py (`make deploy-test`)."""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import yaml

from deployment import DEPLOY, kube_check, manifests
from server.config import SECTIONS, DatabaseSettings, ServerSettings
from server.rpc.server import OFFER_SERVICE

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
    # The embedded database, the one thing the service writes, lies in the one declared volume.
    (volume,) = re.findall(r"^VOLUME (\S+)$", text, re.M)
    sqlite_path = re.search(r"TRADEUP_SQLITE_PATH=(\S+)", text).group(1)
    assert Path(sqlite_path).parent == Path(volume) and Path(DatabaseSettings.sqlite_path).name == Path(sqlite_path).name


def test_manifests_decode_strictly_into_the_kubernetes_types(tmp_path):
    assert set(manifests()) == {"Deployment", "Service", "Secret", "PodDisruptionBudget"}
    misspelt = tmp_path / "deployment.yaml"
    misspelt.write_text((DEPLOY / "k8s" / "deployment.yaml").read_text().replace(
        "readOnlyRootFilesystem:", "readOnlyRootFileSystem:"))
    decoded = kube_check(misspelt)
    assert decoded.returncode == 1 and "securityContext.readOnlyRootFileSystem" in decoded.stderr


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
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    assert pod["terminationGracePeriodSeconds"] > float(env["TRADEUP_GRACE_SECONDS"]["value"])
    deployment = objects["Deployment"]["spec"]
    budget = objects["PodDisruptionBudget"]["spec"]
    assert budget["selector"] == deployment["selector"] and 0 < budget["minAvailable"] < deployment["replicas"]
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
