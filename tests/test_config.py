"""Configuration: sources and their priority, validation, redaction, atomic runtime updates."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, SettingsStore, load_settings


def test_defaults():
    settings = load_settings({})
    assert settings.server.port == 50051 and settings.database.backend == "sqlite"
    assert settings.cache.inventory_ttl_seconds == 4 * 3600 and settings.prefilter.default_limit == 500
    assert settings.business.fees.insurance_amount == 10999.0


def test_priority_json_over_environment_over_defaults(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"server": {"port": 6000, "max_workers": 7}, "business": {"iva_rate": 0.15}}))
    second.write_text(json.dumps({"server": {"port": 7000}}))
    env = {"TRADEUP_PORT": "5000", "TRADEUP_MAX_WORKERS": "3", "TRADEUP_GRACE_SECONDS": "4",
           "TRADEUP_CONFIG_FILES": f"{first},{second}"}
    settings = load_settings(env)
    assert (settings.server.port, settings.server.max_workers, settings.server.grace_seconds) == (7000, 7, 4.0)
    assert settings.business.iva_rate == 0.15
    # The database layer sits above the files; every key says where its value comes from.
    store = SettingsStore(settings)
    store.apply(3, {"business.iva_rate": 0.1})
    assert store.current.business.iva_rate == 0.1 and store.current.version == 3
    sources = store.sources()
    assert (sources["business.iva_rate"], sources["server.port"], sources["server.grace_seconds"],
            sources["server.host"], sources["business.fees.cxa_pct"]) == (
        "database", "file", "environment", "default", "default")


@pytest.mark.parametrize("env, key", [
    ({"TRADEUP_PORT": "http"}, "server.port"),
    ({"TRADEUP_PORT": "70000"}, "server.port"),
    ({"TRADEUP_ENGINE": "fortran"}, "engine.implementation"),
    ({"TRADEUP_POOL_BLOCKING": "maybe"}, "database.pool_blocking"),
    ({"TRADEUP_INVENTORY_TTL_SECONDS": "nan"}, "cache.inventory_ttl_seconds"),
    ({"TRADEUP_DATABASE_URL": "postgres://x@y/z"}, "database.url"),
    ({"TRADEUP_REDIS_URL": "http://cache:6379"}, "redis.url"),
    ({"TRADEUP_CHANGE_POLL_SECONDS": "0"}, "cache.change_poll_seconds"),
    ({"TRADEUP_DATABASE_PASSWORD_FILE": "/no/such/file"}, "TRADEUP_DATABASE_PASSWORD_FILE"),
])
def test_invalid_values_name_the_key(env, key):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.key == key


def test_invalid_json_files_name_the_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"server": {"prot": 1}}))
    with pytest.raises(ConfigError) as err:
        load_settings({"TRADEUP_CONFIG_FILES": str(bad)})
    assert err.value.key == "server.prot"
    bad.write_text(json.dumps({"business": {"fees": {"cxa_pct": 3}}}))
    with pytest.raises(ConfigError) as err:
        load_settings({"TRADEUP_CONFIG_FILES": str(bad)})
    assert err.value.key == "business.fees.cxa_pct"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        load_settings({"TRADEUP_CONFIG_FILES": str(bad)})


def test_secrets_from_files_and_redaction(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    settings = load_settings({"TRADEUP_DATABASE_HOST": "db", "TRADEUP_DATABASE_PASSWORD_FILE": str(secret),
                              "TRADEUP_ADMIN_TOKEN": "tok"})
    assert settings.database.password == "hunter2" and settings.database.backend == "mysql"
    shown = json.dumps(settings.to_dict())
    assert "hunter2" not in shown and "tok\"" not in shown and shown.count("***") == 2


def test_dsn_is_parsed():
    settings = load_settings({"TRADEUP_DATABASE_URL": "mysql://u%40x:p%3Aw@db.internal:3307/prod"})
    assert settings.database.mysql_params() == {"host": "db.internal", "port": 3307, "user": "u@x",
                                                "password": "p:w", "database": "prod"}


def test_database_overrides_are_validated_and_applied_whole():
    store = SettingsStore(load_settings({}))
    store.apply(1, {"business.fees.cac_bonus": 500})
    assert store.current.business.fees.cac_bonus == 500.0
    with pytest.raises(ConfigError) as err:
        store.apply(2, {"business.fees.cac_bonus": 1000, "business.fees.cxa_pct": 3})
    assert err.value.key == "business.fees.cxa_pct"
    assert store.current.business.fees.cac_bonus == 500.0 and store.current.version == 1  # nothing half-applied


def test_server_refuses_to_start_on_invalid_configuration():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "server"], cwd=root, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TRADEUP_MAX_WORKERS": "0"})
    assert result.returncode == 2
    assert "server.max_workers" in result.stderr


def test_readme_lists_every_configuration_key():
    from server.config import keys_markdown
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert keys_markdown() in readme, "README's configuration table is stale: paste `python -m server keys`"


def test_the_suite_never_touches_the_working_tree_state(hermetic):
    """No test reads or writes the working tree's var/ or the TRADEUP_* a user exported: the suite
    runs from a temporary directory and every var/ path setting points there."""
    root = Path(__file__).resolve().parents[1]
    assert not Path.cwd().resolve().is_relative_to(root)
    assert hermetic and all(not Path(path).resolve().is_relative_to(root) for path in hermetic.values())
    assert {name for name in os.environ if name.startswith("TRADEUP_")} <= {
        *hermetic, "TRADEUP_ENGINE", "TRADEUP_GOLDEN_DIR", "TRADEUP_MYSQL_PASSWORD",
        *(n for n in os.environ if n.startswith("TRADEUP_TEST_"))}
    settings = load_settings()  # what a server started by a test sees
    assert not Path(settings.database.sqlite_path).resolve().is_relative_to(root)


def test_log_hash_key_is_a_secret(tmp_path):
    key_file = tmp_path / "log-key"
    key_file.write_text("k-123\n")
    settings = load_settings({"TRADEUP_LOG_HASH_KEY_FILE": str(key_file)})
    assert settings.server.log_hash_key == "k-123" and settings.to_dict()["server"]["log_hash_key"] == "***"
