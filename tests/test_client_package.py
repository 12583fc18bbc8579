"""The client distribution on its own (`pip install ./client`), as a service that only calls us
installs it: a brand-new virtualenv with nothing else, then the CLI and the library against a
real server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_client_alone_calls_the_server(server, tmp_path):
    source = tmp_path / "source"  # built from a copy: the build leaves nothing in the working tree
    shutil.copytree(ROOT / "client", source / "client", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                      "__pycache__"))
    shutil.copytree(ROOT / "protos", source / "protos", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin/python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                "-c", str(ROOT / "constraints.txt"), str(source / "client")],
                               capture_output=True, text=True, timeout=600, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def run(*args):
        return subprocess.run([*map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)

    only_client = run(python, "-c", "import client, protos.tradeup.v1.offers_pb2; import server")
    assert "No module named 'server'" in only_client.stderr  # the client came without the service
    assert run(venv / "bin/tradeup", "--target", server.target, "health").stdout.strip() == "SERVING"
    offers = run(python, "-m", "client", "--target", server.target, "offers", "C0001", "--max-offers", "1", "--json")
    assert offers.returncode == 0, offers.stderr
    assert json.loads(offers.stdout)["summary"]["total_offers"] == 620
    library = run(python, "-c", "from client import OfferClient\n"
                  f"with OfferClient({server.target!r}, timeout=20) as c:\n"
                  "    print(c.generate_offers(customer_id='C0001', max_offers=2).summary.cars_evaluated)")
    assert library.stdout.strip() == "500", library.stderr
