"""The deployment files in deploy/ as the tests read and run them: the Kubernetes manifests decoded
by kube-check (tools/kube-check: strictly, into the k8s.io/api types), and podman (`make
deploy-deps` installs it): the image built from deploy/Dockerfile and containers of it on the
host's loopback."""
from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from conftest import ROOT, tool

DEPLOY = ROOT / "deploy"
# The Dockerfile's base image, and the Debian packages of a stand-in for it when it cannot be pulled.
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
STAND_IN_PACKAGES = "python3,python3-venv,python3-pip,python3-dev,ca-certificates,passwd"
STAND_IN_LABEL = "org.tradeup.stand-in"
# Package downloads inside the build trust what this machine trusts.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def kube_check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kube-check"), *map(str, paths)], capture_output=True, text=True, timeout=60)


def manifests() -> dict[str, dict]:
    """deploy/k8s/ as Kubernetes reads it, by kind (kube-check's typed objects, as JSON)."""
    decoded = kube_check(*sorted((DEPLOY / "k8s").glob("*.yaml")))
    assert decoded.returncode == 0, decoded.stderr
    return {o["kind"]: o for o in json.loads(decoded.stdout)}


def podman(*args: str, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout.strip()


def base_image() -> str:
    """Make sure the Dockerfile's base image is in podman's store: the registry's when it can be
    pulled, else a stand-in made from Debian's own packages (kept for the next run). Says which."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], timeout=60).returncode == 0:
        (inspected,) = json.loads(podman("image", "inspect", BASE_IMAGE))
        stand_in = (inspected.get("Labels") or {}).get(STAND_IN_LABEL, "")
    elif subprocess.run(["podman", "pull", "--quiet", BASE_IMAGE], capture_output=True, timeout=300).returncode == 0:
        stand_in = ""
    else:
        stand_in = make_stand_in()
    return f"{BASE_IMAGE} ({'a stand-in: ' + stand_in if stand_in else 'from the registry'})"


def make_stand_in() -> str:
    """Debian bookworm's Python 3.11 with pip, imported under the base image's name."""
    description = f"Debian bookworm minbase with {STAND_IN_PACKAGES} (the registry could not be reached)"
    with TemporaryDirectory(prefix="tradeup-base-") as workdir:
        tarball = Path(workdir) / "base.tar"
        subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={STAND_IN_PACKAGES}",
                        # As in the python image: pip may install system-wide, and `python` runs.
                        '--customize-hook=rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
                        '--customize-hook=ln -sf python3 "$1"/usr/bin/python',
                        "bookworm", str(tarball)], check=True, timeout=600)
        podman("import", "--quiet", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]',
               "--change", f"LABEL {STAND_IN_LABEL}=\"{description}\"", str(tarball), BASE_IMAGE, timeout=300)
    return description


def build_image(tag: str) -> float:
    """Build deploy/Dockerfile as it is into `tag`; return the seconds it took."""
    started = time.monotonic()
    podman("build", "--quiet", "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--file", str(DEPLOY / "Dockerfile"),
           "--tag", tag, str(ROOT), timeout=900)
    return time.monotonic() - started


class Container:
    """A container of the image serving on a loopback port of the host's network."""

    def __init__(self, name: str, port: int):
        self.name = name
        self.target = f"127.0.0.1:{port}"

    @classmethod
    def run(cls, image: str, environ: dict[str, str], *options: str) -> Container:
        """Start one (TRADEUP_PORT in `environ`; metrics off unless set)."""
        name = f"tradeup-test-{uuid.uuid4().hex[:8]}"
        env = [a for variable, value in {"PYTHONFAULTHANDLER": "1", "TRADEUP_HOST": "127.0.0.1",
                                         "TRADEUP_METRICS_PORT": "0", **environ}.items()
               for a in ("--env", f"{variable}={value}")]
        podman("run", "--detach", "--name", name, "--network=host", *options, *env, image)
        return cls(name, int(environ["TRADEUP_PORT"]))

    def wait_serving(self, services: list[str], timeout: float = 60.0) -> None:
        """Until the server's banner is out (printed once every worker process serves) and
        grpc_health_probe says SERVING for every one of `services`; fails if the container exits."""
        deadline = time.monotonic() + timeout
        waiting = list(services)
        while waiting:
            if self.state() != "running":
                raise AssertionError(f"{self.name} is {self.state()}: {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {waiting} not SERVING within {timeout} s: {self.logs()}")
            if self.output() and probe(self.target, waiting[0]).returncode == 0:
                waiting.pop(0)
            else:
                time.sleep(0.2)

    def inspect(self, template: str) -> str:
        return podman("container", "inspect", "--format", template, self.name)

    def state(self) -> str:
        return self.inspect("{{.State.Status}}")

    def logs(self) -> str:
        """The end of its log (stderr)."""
        return self._logs().stderr[-4000:]

    def output(self) -> str:
        """What it printed on stdout (the banner)."""
        return self._logs().stdout

    def _logs(self) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "logs", self.name], capture_output=True, text=True, timeout=30)

    def execute(self, *command: str) -> str:
        return podman("exec", self.name, *command)

    def stop(self, seconds: int = 30) -> int:
        """SIGTERM, SIGKILL after `seconds`; the exit status."""
        podman("stop", "--time", str(seconds), self.name, timeout=seconds + 30)
        return int(self.inspect("{{.State.ExitCode}}"))

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def probe(target: str, service: str) -> subprocess.CompletedProcess:
    """grpc_health_probe, as a Kubernetes gRPC probe asks (service "" is the server as a whole)."""
    return subprocess.run([tool("grpc-health-probe"), "-addr", target, "-service", service, "-connect-timeout", "2s",
                           "-rpc-timeout", "2s"], capture_output=True, text=True, timeout=30)
