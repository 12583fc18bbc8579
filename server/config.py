"""Configuration: one typed schema with documented defaults, the single source of truth.

Sources, lowest priority first: the defaults below, environment variables, the JSON files
listed in TRADEUP_CONFIG_FILES (comma-separated), then the database: business parameters
changed through the AdminService are stored there key by key (table config_overrides) and
every process applies them on its next change-feed tick. Every key names its environment
variable; secrets can also be read from a file named by `<VARIABLE>_FILE`. Invalid values stop
start-up with ConfigError naming the key. `business` holds the pricing parameters (SPEC §4) in
the params.json layout.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

from engine_ext import EngineInputError, PricingParams

from .errors import ConfigError

REDACTED = "***"


def key(default: Any, env: str, doc: str, *, minimum: float | None = None, maximum: float | None = None,
        choices: tuple[str, ...] | None = None, secret: bool = False):
    return field(default=default, metadata={"env": env, "doc": doc, "minimum": minimum, "maximum": maximum,
                                            "choices": choices, "secret": secret})


@dataclass(frozen=True)
class ServerSettings:
    host: str = key("[::]", "TRADEUP_HOST", "address to listen on")
    port: int = key(50051, "TRADEUP_PORT", "gRPC port (0 = any free port)", minimum=0, maximum=65535)
    processes: int = key(1, "TRADEUP_PROCESSES",
                         "server processes sharing the port (SO_REUSEPORT), each with its own threads",
                         minimum=1, maximum=64)
    max_workers: int = key(8, "TRADEUP_MAX_WORKERS",
                           "calls pricing at once, per process (more contend for the GIL); the others wait "
                           "for a worker within their deadline; idle streams, health and probes hold none",
                           minimum=1, maximum=1024)
    max_concurrent_rpcs: int = key(64, "TRADEUP_MAX_CONCURRENT_RPCS",
                                   "unary service calls admitted at once, working or waiting for a worker, per "
                                   "process; more get RESOURCE_EXHAUSTED", minimum=1, maximum=100000)
    max_streams: int = key(512, "TRADEUP_MAX_STREAMS",
                           "StreamOffers, GenerateOffersBulk and FindMinimumSubsidy streams open at once, per "
                           "process, each on a server thread; an open stream holds a worker only while it prices; "
                           "more get RESOURCE_EXHAUSTED", minimum=1, maximum=100000)
    max_streams_per_caller: int = key(256, "TRADEUP_MAX_STREAMS_PER_CALLER",
                                      "streams (WatchOffers included) one caller may hold open at once, per process; "
                                      "the caller is the rate_limit_key metadata, else the peer address; more get "
                                      "RESOURCE_EXHAUSTED", minimum=1, maximum=100000)
    default_deadline_seconds: float = key(30.0, "TRADEUP_DEFAULT_DEADLINE_SECONDS",
                                          "deadline of a call that sets none (of each customer of a bulk stream, "
                                          "each pricing of a watch): every wait inside is bounded by it, and such "
                                          "a stream left waiting on its client for as long is cancelled",
                                          minimum=0.1, maximum=86400)
    max_message_bytes: int = key(16 * 1024 * 1024, "TRADEUP_MAX_MESSAGE_BYTES",
                                 "largest request or response message", minimum=1024, maximum=1 << 30)
    grace_seconds: float = key(10.0, "TRADEUP_GRACE_SECONDS",
                               "on SIGTERM, time in-flight calls get to finish", minimum=0, maximum=3600)
    stream_batch_size: int = key(200, "TRADEUP_STREAM_BATCH_SIZE",
                                 "offers or subsidy results per streamed message", minimum=1, maximum=10000)
    max_bulk_customers: int = key(10000, "TRADEUP_MAX_BULK_CUSTOMERS",
                                  "requests on one GenerateOffersBulk stream", minimum=1, maximum=1000000)
    max_watchers: int = key(10000, "TRADEUP_MAX_WATCHERS",
                            "WatchOffers streams per process (they hold no thread; not counted in max_streams "
                            "or max_concurrent_rpcs); more get RESOURCE_EXHAUSTED", minimum=0, maximum=100000)
    watch_send_threads: int = key(4, "TRADEUP_WATCH_SEND_THREADS",
                                  "threads that send the WatchOffers updates of a process, one message of a "
                                  "stream at a time", minimum=1, maximum=256)
    watch_stall_seconds: float = key(5.0, "TRADEUP_WATCH_STALL_SECONDS",
                                     "a WatchOffers stream whose reader leaves a message unread (its HTTP/2 "
                                     "window full) for this long is cancelled, freeing its sender thread",
                                     minimum=0.1, maximum=3600)
    watch_queue_messages: int = key(16, "TRADEUP_WATCH_QUEUE_MESSAGES",
                                    "changes a WatchOffers reader may fall behind by before it gets one fresh "
                                    "full answer (RESYNC) instead", minimum=1, maximum=10000)
    watch_customer_poll_seconds: float = key(2.0, "TRADEUP_WATCH_CUSTOMER_POLL_SECONDS",
                                             "how often the watched stored customers are re-read (one query for "
                                             "all of them) to notice a changed record", minimum=0.05, maximum=3600)
    rate_limit_per_second: float = key(0.0, "TRADEUP_RATE_LIMIT_PER_SECOND",
                                       "calls a second per caller, on average (0 = no limit)",
                                       minimum=0, maximum=1e6)
    rate_limit_burst: int = key(20, "TRADEUP_RATE_LIMIT_BURST", "calls a caller may make at once",
                                minimum=1, maximum=1_000_000)
    rate_limit_key: str = key("", "TRADEUP_RATE_LIMIT_KEY",
                              "metadata key naming the caller (e.g. x-caller-id); empty: the peer address")
    tls_cert_file: str = key("", "TRADEUP_TLS_CERT_FILE", "PEM certificate chain: serve TLS when set")
    tls_key_file: str = key("", "TRADEUP_TLS_KEY_FILE", "PEM private key of the certificate", secret=True)
    tls_client_ca_file: str = key("", "TRADEUP_TLS_CLIENT_CA_FILE",
                                  "PEM roots of client certificates: require mutual TLS when set")
    admin_token: str = key("", "TRADEUP_ADMIN_TOKEN",
                           "bearer token of the AdminService (empty: admin calls are refused)", secret=True)
    log_level: str = key("INFO", "TRADEUP_LOG_LEVEL", "logging level",
                         choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = key("json", "TRADEUP_LOG_FORMAT", "one JSON object per line, or plain text",
                          choices=("json", "text"))
    access_log_sample: float = key(0.01, "TRADEUP_ACCESS_LOG_SAMPLE",
                                   "share of successful service calls logged (one in round(1 / share); 1 = an "
                                   "access-log line per call, 0 = none); failed and slow calls are always logged, "
                                   "health and reflection never; the metrics count every call",
                                   minimum=0.0, maximum=1.0)
    slow_call_ms: float = key(1000.0, "TRADEUP_SLOW_CALL_MS",
                              "a call (a stream: until its end) lasting this long or longer is always logged",
                              minimum=0.0, maximum=86_400_000)
    log_customer_ids: bool = key(False, "TRADEUP_LOG_CUSTOMER_IDS",
                                 "log raw customer ids (default: their keyed hash, see log_hash_key)")
    log_hash_key: str = key("", "TRADEUP_LOG_HASH_KEY",
                            "HMAC-SHA256 key of the customer ids in the logs, the same on every replica; "
                            "empty: customer ids are left out of the logs (a warning at start)", secret=True)
    metrics_port: int = key(0, "TRADEUP_METRICS_PORT",
                            "Prometheus /metrics HTTP port (0 = off); with N processes, worker k uses port + k",
                            minimum=0, maximum=65535)
    metrics_host: str = key("0.0.0.0", "TRADEUP_METRICS_HOST", "address of the metrics endpoint")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = key("", "TRADEUP_DATABASE_URL",
                   "MySQL DSN mysql://user:password@host:port/database (overrides host..database)", secret=True)
    host: str = key("", "TRADEUP_DATABASE_HOST", "MySQL host; empty with no url: the embedded SQLite database")
    port: int = key(3306, "TRADEUP_DATABASE_PORT", "MySQL port", minimum=1, maximum=65535)
    user: str = key("tradeup", "TRADEUP_DATABASE_USER", "MySQL user")
    password: str = key("", "TRADEUP_DATABASE_PASSWORD", "MySQL password", secret=True)
    database: str = key("tradeup", "TRADEUP_DATABASE_NAME", "MySQL database")
    sqlite_path: str = key("var/tradeup.db", "TRADEUP_SQLITE_PATH", "embedded database file")
    seed_demo_data: bool = key(True, "TRADEUP_SEED_DEMO_DATA",
                               "seed an empty embedded (SQLite) database with the demo data at start; "
                               "MySQL only on request (`make seed`)")
    pool_max_connections: int = key(16, "TRADEUP_POOL_MAX_CONNECTIONS",
                                    "connections per process, opened once the database answers and kept; a call "
                                    "waits for a free one within its deadline. Calls read the database only while "
                                    "they hold a worker: keep it above max_workers (admin calls and the change feed "
                                    "use a few more), and processes x replicas x this under the database's "
                                    "max_connections (151 by default on MariaDB)", minimum=1, maximum=10000)
    pool_blocking: bool = key(True, "TRADEUP_POOL_BLOCKING",
                              "wait for a free connection (else fail at once with UNAVAILABLE)")
    pool_ping: int = key(0, "TRADEUP_POOL_PING",
                         "1: ping a connection (one round trip) when a call takes a cursor on it; 0: never (a "
                         "connection found dead by its first read is replaced and the read retried once)",
                         minimum=0, maximum=1)
    connect_timeout: float = key(2.0, "TRADEUP_DATABASE_CONNECT_TIMEOUT", "seconds", minimum=0.1, maximum=300)
    read_timeout: float = key(5.0, "TRADEUP_DATABASE_READ_TIMEOUT", "seconds", minimum=0.1, maximum=3600)
    write_timeout: float = key(5.0, "TRADEUP_DATABASE_WRITE_TIMEOUT", "seconds", minimum=0.1, maximum=3600)
    autocommit: bool = key(True, "TRADEUP_DATABASE_AUTOCOMMIT", "autocommit on pooled connections")
    breaker_failures: int = key(3, "TRADEUP_BREAKER_FAILURES",
                                "consecutive database failures that open the circuit", minimum=1, maximum=1000)
    breaker_reset_seconds: float = key(2.0, "TRADEUP_BREAKER_RESET_SECONDS",
                                       "how long the circuit stays open before one probe", minimum=0.01, maximum=3600)
    health_check_seconds: float = key(1.0, "TRADEUP_HEALTH_CHECK_SECONDS",
                                      "how often health pings the database", minimum=0.05, maximum=3600)

    @property
    def backend(self) -> str:
        return "mysql" if self.url or self.host else "sqlite"

    def mysql_params(self) -> dict[str, Any]:
        """host, port, user, password, database: from the url when given."""
        if not self.url:
            return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                    "database": self.database}
        parsed = urlparse(self.url)
        if parsed.scheme not in ("mysql", "mariadb", "mysql+pymysql") or not parsed.hostname:
            raise ConfigError("database.url", "must look like mysql://user:password@host:port/database")
        return {"host": parsed.hostname, "port": parsed.port or 3306, "user": unquote(parsed.username or ""),
                "password": unquote(parsed.password or ""), "database": parsed.path.lstrip("/") or self.database}


@dataclass(frozen=True)
class CacheSettings:
    inventory_ttl_seconds: float = key(4 * 3600.0, "TRADEUP_INVENTORY_TTL_SECONDS",
                                       "lifetime of the cached inventory snapshot", minimum=0.001, maximum=7 * 86400)
    prefilter_max_entries: int = key(10000, "TRADEUP_PREFILTER_CACHE_ENTRIES",
                                     "cached SQL prefilter results (sql mode)", minimum=1, maximum=10_000_000)
    change_poll_seconds: float = key(0.5, "TRADEUP_CHANGE_POLL_SECONDS",
                                     "how often each process checks the database for configuration and "
                                     "inventory changes", minimum=0.05, maximum=3600)
    change_overlap_seconds: float = key(2.0, "TRADEUP_CHANGE_OVERLAP_SECONDS",
                                        "changed cars are re-read this far back, for writes that commit late "
                                        "(MySQL)", minimum=0, maximum=3600)
    reconcile_seconds: float = key(15.0, "TRADEUP_RECONCILE_SECONDS",
                                   "how often each process compares its inventory snapshot with the database "
                                   "(count and checksum per bucket of car ids) and applies what the change feed "
                                   "missed: rows deleted by plain SQL, writes that committed after the overlap",
                                   minimum=0.05, maximum=86400)


@dataclass(frozen=True)
class RedisSettings:
    url: str = key("", "TRADEUP_REDIS_URL",
                   "redis://host:port/db: pushes changes to every process and shares the rate limit "
                   "(empty: no Redis; polling only)", secret=True)
    timeout_seconds: float = key(0.1, "TRADEUP_REDIS_TIMEOUT_SECONDS",
                                 "longest wait for a Redis reply; slower means down (falls back)",
                                 minimum=0.005, maximum=60)
    retry_seconds: float = key(1.0, "TRADEUP_REDIS_RETRY_SECONDS",
                               "after a Redis failure, how long to use the fallbacks before trying again",
                               minimum=0.05, maximum=3600)
    prefix: str = key("tradeup", "TRADEUP_REDIS_PREFIX", "prefix of the Redis keys and channel")


@dataclass(frozen=True)
class EngineSettings:
    implementation: str = key("compiled", "TRADEUP_ENGINE", "pricing kernel", choices=("compiled", "python"))
    workers: int = key(0, "TRADEUP_ENGINE_WORKERS", "threads per request (0 = CPU count)", minimum=0, maximum=256)
    offer_chunk_cars: int = key(16384, "TRADEUP_ENGINE_OFFER_CHUNK_CARS",
                                "cars per thread task when pricing offers; a request is spread over the "
                                "threads from two chunks on (on 2 cores it pays from about 32,000 cars: "
                                "`make bench-engine`), so offer requests (at most 2,000 cars) price inline",
                                minimum=1, maximum=1_000_000)
    subsidy_chunk_cars: int = key(64, "TRADEUP_ENGINE_SUBSIDY_CHUNK_CARS",
                                  "cars per thread task in the subsidy search; spread from two chunks on (on "
                                  "2 cores it pays from about 128 cars: `make bench-engine`)",
                                  minimum=1, maximum=1_000_000)


@dataclass(frozen=True)
class PrefilterSettings:
    mode: str = key("snapshot", "TRADEUP_PREFILTER_MODE",
                    "snapshot: match in memory against the cached inventory; sql: query per request",
                    choices=("snapshot", "sql"))
    default_limit: int = key(500, "TRADEUP_PREFILTER_LIMIT", "cars per customer by default", minimum=1, maximum=2000)
    max_limit: int = key(2000, "TRADEUP_PREFILTER_MAX_LIMIT", "largest max_cars a request may ask", minimum=1,
                         maximum=100000)


SECTIONS = {"server": ServerSettings, "database": DatabaseSettings, "cache": CacheSettings,
            "engine": EngineSettings, "prefilter": PrefilterSettings, "redis": RedisSettings}
SOURCES = ("database", "file", "environment", "default")


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    prefilter: PrefilterSettings = field(default_factory=PrefilterSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    business: PricingParams = field(default_factory=PricingParams)
    version: int = 0  # configuration version from the database (0: none applied yet)
    # key path -> "file" or "environment" for the keys those sources set (load_settings).
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: (REDACTED if redact and f.metadata["secret"] and getattr(section, f.name)
                                  else getattr(section, f.name)) for f in fields(section)}
        out["business"] = self.business.to_dict()
        return out


def keys_markdown() -> str:
    """The configuration reference (README): every key, its variable, default and meaning."""
    lines = ["| key | environment | default | meaning |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            meta = f.metadata
            default = "" if f.default == "" else f"`{f.default}`"
            choices = f" ({' / '.join(meta['choices'])})" if meta["choices"] else ""
            secret = " Secret: also `" + meta["env"] + "_FILE`; shown as ***." if meta["secret"] else ""
            lines.append(f"| `{section}.{f.name}` | `{meta['env']}` | {default} | {meta['doc']}{choices}.{secret} |")
    lines.append("| `business.*` | (JSON files; the database) | SPEC §4 | pricing parameters in the params.json "
                 "layout (rates, down-payment table, fees, tiers, terms, subsidy grid and gates); changed at "
                 "runtime with `set-params`, stored in the database |")
    return "\n".join(lines)


def _coerce(section: str, f, value: Any) -> Any:
    name = f"{section}.{f.name}"
    meta, kind = f.metadata, f.type
    try:
        if kind == "bool":
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = lowered in ("1", "true", "yes", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be a {kind}, got {value!r}") from None
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(name, f"must be >= {meta['minimum']}, got {value!r}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(name, f"must be <= {meta['maximum']}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(name, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
    return value


def _from_environment(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            env = f.metadata["env"]
            if env in environ:
                raw.setdefault(section, {})[f.name] = environ[env]
            elif f.metadata["secret"] and f"{env}_FILE" in environ:
                try:
                    raw.setdefault(section, {})[f.name] = Path(environ[f"{env}_FILE"]).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"{env}_FILE", f"cannot read {environ[env + '_FILE']}: {exc.strerror}") from None
    return raw


def deep_merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of base with changes merged in key by key (nested objects merged, the rest replaced)."""
    merged = dict(base)
    for name, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = deep_merge(dict(merged[name]), value)
        else:
            merged[name] = value
    return merged


def _read_json(path: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(what, f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(what, f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(what, f"{path} must hold a JSON object")
    return data


def build_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate a nested dict of sections into Settings (ConfigError names the bad key)."""
    unknown = set(raw) - set(SECTIONS) - {"business"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], f"unknown section (sections: {', '.join([*SECTIONS, 'business'])})")
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, Mapping):
            raise ConfigError(section, "must be an object")
        names = {f.name: f for f in fields(cls)}
        for name in values:
            if name not in names:
                raise ConfigError(f"{section}.{name}", "unknown key")
        built[section] = cls(**{name: _coerce(section, names[name], value) for name, value in values.items()})
    try:
        built["business"] = PricingParams.from_dict(raw.get("business", {}))
    except EngineInputError as exc:
        raise ConfigError(f"business.{exc.field}", exc.reason) from None
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ConfigError("business", f"malformed: {exc}") from None
    settings = Settings(**built)
    s = settings.server
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError("server.tls_key_file", "TLS needs both tls_cert_file and tls_key_file")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise ConfigError("server.tls_client_ca_file", "mutual TLS needs tls_cert_file and tls_key_file")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"server.{name}", f"no such file: {path}")
    if settings.database.backend == "mysql":
        settings.database.mysql_params()  # validates the url
    if settings.redis.url and urlparse(settings.redis.url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError("redis.url", "must look like redis://host:port/db (or rediss://, unix://)")
    return settings


def flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Key paths of the leaves of a nested document: {"fees": {"cxa_pct": 0.04}} -> {"fees.cxa_pct": 0.04}.
    Objects are walked; any other value (lists included) is one leaf."""
    leaves: dict[str, Any] = {}
    for name, value in document.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            leaves.update(flatten(value, path + "."))
        else:
            leaves[path] = value
    return leaves


def nest(leaves: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of flatten."""
    document: dict[str, Any] = {}
    for path, value in leaves.items():
        *parents, name = path.split(".")
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ConfigError(path, "conflicts with another key")
        node[name] = value
    return document


def build_business(settings: Settings, overrides: Mapping[str, Any]) -> PricingParams:
    """The business parameters of `settings` with database overrides (business.* key paths) merged in."""
    changes = nest({path.removeprefix("business."): value for path, value in overrides.items()})
    try:
        return PricingParams.from_dict(deep_merge(settings.business.to_dict(), changes))
    except EngineInputError as exc:
        raise ConfigError(f"business.{exc.field}", exc.reason) from None
    except (TypeError, KeyError, AttributeError, ValueError) as exc:
        raise ConfigError("business", f"malformed: {exc}") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, environment and JSON files (the database layer is applied by SettingsStore)."""
    environ = os.environ if environ is None else environ
    from_environment = _from_environment(environ)
    raw: dict[str, Any] = from_environment
    from_files: dict[str, Any] = {}
    for path in filter(None, (p.strip() for p in environ.get("TRADEUP_CONFIG_FILES", "").split(","))):
        from_files = deep_merge(from_files, _read_json(path, "TRADEUP_CONFIG_FILES"))
    raw = deep_merge(raw, from_files)
    origins = {**{path: "environment" for path in flatten(from_environment)},
               **{path: "file" for path in flatten(from_files)}}
    return replace(build_settings(raw), origins=origins)


class SettingsStore:
    """The settings in effect: the start-up settings with the database overrides of one version.
    Readers take `current` once per request (it carries its `version`); a new version is built
    and validated completely, then swapped in by one reference assignment: never half-applied."""

    def __init__(self, settings: Settings):
        self.base = settings
        self.current = settings
        self.overrides: dict[str, Any] = {}
        self._lock = threading.Lock()

    def build(self, overrides: Mapping[str, Any], version: int) -> Settings:
        """Settings with these overrides (ConfigError names a bad key)."""
        return replace(self.base, business=build_business(self.base, overrides), version=version)

    def apply(self, version: int, overrides: Mapping[str, Any]) -> Settings:
        """Make the settings of this configuration version current (a no-op when it already is)."""
        with self._lock:
            if version != self.current.version or dict(overrides) != self.overrides:
                self.current = self.build(overrides, version)
                self.overrides = dict(overrides)
            return self.current

    def sources(self) -> dict[str, str]:
        """Every key path and where its value comes from: database, file, environment or default."""
        with self._lock:
            current, overrides = self.current, self.overrides
        shown = current.to_dict(redact=True)
        paths = [f"{section}.{name}" for section in SECTIONS for name in shown[section]]
        paths += flatten(shown["business"], "business.")
        origins = current.origins
        return {path: "database" if path in overrides else origins.get(path, "default") for path in paths}
