"""Fixtures: kernels, real databases (the embedded SQLite file and a real MariaDB), and a real
gRPC server on an ephemeral loopback port.

MariaDB: TRADEUP_TEST_MYSQL_URL (set by .ci/run) names a server; otherwise, when the MariaDB
binaries are installed, the session starts a private throwaway one. With neither, MySQL tests
fail when CI=true and are skipped with that reason otherwise.

Hermetic: before any test runs, every TRADEUP_* variable the user may have set is cleared (the
test harness's own TRADEUP_TEST_*, TRADEUP_ENGINE and TRADEUP_GOLDEN_DIR are kept), and so is every
OTEL_* variable (a server a test starts traces only when the test says so), every path
setting whose default lies under var/ points into a temporary directory, and the tests run from
there: nothing reads or writes the working tree's var/ or what a user's run left in it.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_ext import IMPLEMENTATIONS, Engine, load_kernel  # noqa: E402

import golden_data as golden  # noqa: E402
from mariadb import MariaDBServer, binaries_available  # noqa: E402

BACKENDS = ("sqlite", "mysql")
ROOT = Path(__file__).resolve().parents[1]
# Variables that steer the test run itself, not the service under test.
HARNESS_VARIABLES = ("TRADEUP_ENGINE", "TRADEUP_GOLDEN_DIR", "TRADEUP_MYSQL_PASSWORD")
LOG_HASH_KEY = "test-log-hash-key"


def isolate_from_the_working_tree(state_dir: Path) -> dict[str, str]:
    """Clear the user's TRADEUP_* and OTEL_* environment; point var/ paths into state_dir; return those paths."""
    from dataclasses import fields

    from server.config import SECTIONS
    for name in [n for n in os.environ if n.startswith(("TRADEUP_", "OTEL_"))]:
        if not is_harness_variable(name):
            del os.environ[name]
    paths = {}
    for cls in SECTIONS.values():
        for f in fields(cls):
            if isinstance(f.default, str) and f.default.startswith("var/"):
                paths[f.metadata["env"]] = str(state_dir / f.default)
    os.environ.update(paths)
    return paths


def is_harness_variable(name: str) -> bool:
    return name.startswith("TRADEUP_TEST_") or name in HARNESS_VARIABLES


@pytest.fixture(scope="session", autouse=True)
def hermetic(tmp_path_factory):
    """Run every test away from the working tree's state (see the module docstring)."""
    state_dir = tmp_path_factory.mktemp("state")
    saved_environ, saved_cwd = dict(os.environ), os.getcwd()
    paths = isolate_from_the_working_tree(state_dir)
    os.chdir(state_dir)
    yield paths
    os.chdir(saved_cwd)
    os.environ.clear()
    os.environ.update(saved_environ)


def pytest_report_header(config):
    mysql = os.environ.get("TRADEUP_TEST_MYSQL_URL")
    where = "TRADEUP_TEST_MYSQL_URL" if mysql else ("a private MariaDB started by the tests"
                                                    if binaries_available() else "none (mariadbd not installed)")
    return [f"engine for the server tests: {os.environ.get('TRADEUP_ENGINE') or 'compiled'}",
            f"MariaDB for the tests: {where}"]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda name: f"{name}-kernel")
def kernel(request):
    return load_kernel(request.param)


@pytest.fixture
def engine(kernel):
    engine = Engine(kernel, workers=2, offer_chunk_cars=64, subsidy_chunk_cars=4)
    yield engine
    engine.close()


def tool(name: str) -> str:
    """The path of a Go tool `make tools` installs into bin/; missing, the test is skipped (fails in CI)."""
    for candidate in (ROOT / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    reason = f"{name} is not installed: run `make tools` (needs Go)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mysql_server_url(tmp_path_factory):
    """A MariaDB url with a database the tests may fill and empty."""
    url = os.environ.get("TRADEUP_TEST_MYSQL_URL")
    if url:
        yield url
        return
    if not binaries_available():
        reason = "MariaDB is not installed (mariadbd missing) and TRADEUP_TEST_MYSQL_URL is not set"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"), free_port())
    server.start()
    server.create_database("tradeup_test", "tradeup", "test-password")
    yield f"mysql://tradeup:test-password@127.0.0.1:{server.port}/tradeup_test"
    server.stop()


@pytest.fixture
def mysql_environ(mysql_server_url):
    """The MariaDB test database holding the golden data; refilled afterwards (undoing a test's
    sold cars and stored configuration)."""
    environ = {"TRADEUP_DATABASE_URL": mysql_server_url}
    load_golden(environ)
    yield environ
    load_golden(environ)


def database_environ(backend: str, request, tmp_path) -> dict[str, str]:
    """Configuration environment for a test database of `backend`."""
    if backend == "sqlite":
        return {"TRADEUP_SQLITE_PATH": str(tmp_path / f"tradeup-{uuid.uuid4().hex[:8]}.db")}
    return {"TRADEUP_DATABASE_URL": request.getfixturevalue("mysql_server_url")}


@pytest.fixture(scope="session")
def session_dir():
    with tempfile.TemporaryDirectory(prefix="tradeup-tests-") as path:
        yield Path(path)


def make_settings(environ: dict[str, str], **extra):
    from server.config import load_settings
    base = {"TRADEUP_PORT": "0", "TRADEUP_HOST": "127.0.0.1", "TRADEUP_SEED_DEMO_DATA": "false",
            "TRADEUP_ADMIN_TOKEN": "test-admin-token", "TRADEUP_HEALTH_CHECK_SECONDS": "0.2",
            "TRADEUP_LOG_HASH_KEY": LOG_HASH_KEY,
            "TRADEUP_ACCESS_LOG_SAMPLE": "1",  # a line per call: tests read the access log
            "TRADEUP_ENGINE": os.environ.get("TRADEUP_ENGINE", "compiled")}
    return load_settings({**base, **environ, **{k: str(v) for k, v in extra.items()}})


def load_golden(environ: dict[str, str]) -> None:
    """Fill the database named by `environ` with the golden inventory and customers."""
    from server.app import open_repository
    repository = open_repository(make_settings(environ))
    repository.migrate()
    repository.delete_all()
    repository.clear_config()
    repository.put_cars(golden.cars())
    repository.put_customers(golden.domain_customers())
    repository.database.close()


@pytest.fixture(scope="session", params=BACKENDS)
def golden_database(request, session_dir):
    """(backend, environment) of a database holding the golden inventory and customers."""
    backend = request.param
    environ = database_environ(backend, request, session_dir)
    load_golden(environ)
    return backend, environ


@pytest.fixture
def repository(golden_database):
    from server.app import open_repository
    repository = open_repository(make_settings(golden_database[1]))
    yield repository
    repository.database.close()


class RunningServer:
    def __init__(self, app):
        from client import OfferClient
        self.app = app
        self.target = f"127.0.0.1:{app.port}"
        self.client = OfferClient(self.target, timeout=20, admin_token="test-admin-token")

    def stop(self):
        self.client.close()
        self.app.stop(grace=1)

    def reset_config(self):
        """Remove the configuration this test stored in the shared test database."""
        from server.app import open_repository
        repository = open_repository(self.app.settings.base)
        try:
            repository.clear_config()
        finally:
            repository.database.close()


def start_server(environ: dict[str, str], **extra) -> RunningServer:
    from server.app import Application
    app = Application(make_settings(environ, **extra))
    app.start()
    return RunningServer(app)


@pytest.fixture
def server(golden_database, tmp_path):
    """A real gRPC server on a loopback port over the golden data (per backend)."""
    running = start_server(golden_database[1])
    yield running
    running.stop()
    running.reset_config()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port, for one test (which may kill it)."""
    from redis_server import RedisServer, binary
    if binary() is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.kill()
