"""The distributions as users install them, each into a brand-new virtualenv with nothing else:
`pip install .` (the service: a runtime dependency declared only in the test extra, or not at
all, fails here) and `pip install ./client` (the client alone, for services that only call us).
Both are built from a copy of the sources, so the build leaves nothing in the working tree."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import golden_data as golden
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BUILD_LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so", "*.c")
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def new_venv(where: Path, *requirements: str | Path) -> Path:
    """A new virtualenv with `requirements` installed at the versions of constraints.txt; its bin/."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    installed = subprocess.run([str(where / "bin/python"), "-m", "pip", "install", "--quiet",
                                "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"),
                                *map(str, requirements)], capture_output=True, text=True, timeout=900, env=ENV)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return where / "bin"


def test_service_alone_serves(tmp_path):
    source = tmp_path / "source"
    for name in ("engine_ext", "server", "client", "protos"):
        shutil.copytree(ROOT / name, source / name, ignore=BUILD_LEFTOVERS)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    bin_dir = new_venv(tmp_path / "venv", source)
    port = free_port()
    env = {**ENV, "TRADEUP_PORT": str(port), "TRADEUP_HOST": "127.0.0.1", "TRADEUP_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([str(bin_dir / "tradeup-server")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert f"listening on 127.0.0.1:{port}" in process.stdout.readline()  # after seeding var/tradeup.db
        health = subprocess.run([str(bin_dir / "tradeup"), "--target", f"127.0.0.1:{port}", "health"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
        assert health.stdout.strip() == "SERVING", health.stderr
        assert (tmp_path / "var/tradeup.db").exists()  # relative to where it runs, not to the sources
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("golden_database", ["sqlite"], indirect=True)  # one backend is enough here
def test_client_alone_calls_the_server(server, tmp_path):
    source = tmp_path / "source"
    for name in ("client", "protos"):
        shutil.copytree(ROOT / name, source / name, ignore=BUILD_LEFTOVERS)
    bin_dir = new_venv(tmp_path / "venv", source / "client")
    python = bin_dir / "python"

    def run(*args):
        return subprocess.run([*map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)

    only_client = run(python, "-c", "import client, protos.tradeup.v1.offers_pb2; import server")
    assert "No module named 'server'" in only_client.stderr  # the client came without the service
    assert run(bin_dir / "tradeup", "--target", server.target, "health").stdout.strip() == "SERVING"
    customer = golden.customer_ids()[0]
    record = golden.offers_of(customer)
    offers = run(python, "-m", "client", "--target", server.target, "offers", customer, "--max-offers", "1", "--json")
    assert offers.returncode == 0, offers.stderr
    assert json.loads(offers.stdout)["summary"]["total_offers"] == len(record["offers"])
    library = run(python, "-c", "from client import OfferClient\n"
                  f"with OfferClient({server.target!r}, timeout=20) as c:\n"
                  f"    print(c.generate_offers(customer_id={customer!r}, max_offers=2).summary.cars_evaluated)")
    assert library.stdout.strip() == str(len(record["cars"])), library.stderr


def declared(pyproject: Path, extra: str | None = None) -> dict[str, str]:
    """Normalized distribution name -> its requirement, as pyproject.toml declares them."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {canonical(re.split(r"[<>=!~ \[;]", r, 1)[0]): r for r in requirements}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(*packages: str) -> set[str]:
    """The third-party distributions the modules of `packages` import (every import statement)."""
    imports: set[tuple[str, ...]] = set()  # each import: the modules it may name, most specific first
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "generate.py":  # protos/generate.py: a development tool (grpcio-tools, test extra)
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imports.update((alias.name,) for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imports.update((f"{node.module}.{alias.name}", node.module) for alias in node.names)
    mapping = importlib.metadata.packages_distributions()
    ours = {"engine_ext", "server", "client", "protos"}
    found: set[str] = set()
    for names in imports:
        top = names[0].split(".")[0]
        if top in ours:
            continue
        candidates = mapping.get(top, ())
        if len(candidates) > 1:  # a namespace shared by several distributions (opentelemetry): whose module
            candidates = next(filter(None, ({d for d in candidates if provides(d, name)} for name in names)), ())
        found.update(canonical(dist) for dist in candidates)
    return found


def provides(distribution: str, module: str) -> bool:
    path = module.replace(".", "/")
    return any(str(f).startswith((path + "/", path + ".py")) for f in importlib.metadata.files(distribution) or ())


def test_dependencies_are_declared_with_the_bounds_the_stubs_need():
    service, client = declared(ROOT / "pyproject.toml"), declared(ROOT / "client/pyproject.toml")
    assert imported_distributions("server", "engine_ext", "client", "protos") <= set(service)
    assert imported_distributions("client", "protos") <= set(client)
    stub = (ROOT / "protos/tradeup/v1/offers_pb2.py").read_text()
    protobuf = ".".join(re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", stub).groups())
    grpcio = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (ROOT / "protos/tradeup/v1/offers_pb2_grpc.py")
                       .read_text()).group(1)
    for requirements in (service, client):
        assert f"protobuf>={protobuf}," in requirements["protobuf"]  # the stubs refuse older runtimes
        assert f"grpcio>={grpcio}," in requirements["grpcio"]
    assert "grpcio-tools==" + grpcio in declared(ROOT / "pyproject.toml", "test").values()


def test_the_test_timeout_is_enforced(request):
    assert request.config.pluginmanager.hasplugin("timeout") and request.config.getini("timeout") == "300"
