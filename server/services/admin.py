"""Administration: effective configuration, runtime business parameters, caches, status."""
from __future__ import annotations

import hmac
import time
from typing import Any, Callable, Mapping

from engine_ext.params import change_errors

from ..config import SettingsStore, flatten
from ..data.inventory import InventoryCache
from ..data.repository import Repository
from ..deadline import Deadline
from ..domain import ConfigChange
from ..errors import ConfigError, FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated, Violations
from .changefeed import CONFIG, ChangeFeed

MAX_HISTORY = 1000


def _reason(exc: ConfigError) -> str:
    return str(exc).split(": ", 1)[-1]


def _field(exc: ConfigError) -> str:
    """The request field of a business parameter's error: changes.<its path>."""
    path = exc.key.removeprefix("business").lstrip(".")
    return f"changes.{path}" if path else "changes"

VERSION = "0.1.0"


class AdminService:
    def __init__(self, settings: SettingsStore, repository: Repository, inventory: InventoryCache,
                 engine_implementation: str, database_reachable: Callable[[], bool], feed: ChangeFeed,
                 watch_status: Callable[[], dict[str, int]]):
        """`watch_status`: the open WatchOffers streams and their groups (WatchService.status)."""
        self.settings = settings
        self.watch_status = watch_status
        self.repository = repository
        self.inventory = inventory
        self.feed = feed
        self.engine_implementation = engine_implementation
        self.database_reachable = database_reachable
        self.started = time.monotonic()

    def authorize(self, authorization: str | None) -> None:
        """`authorization: Bearer <token>` must carry the configured admin token."""
        expected = self.settings.current.server.admin_token
        if not expected:
            raise FailedPrecondition("admin is disabled on this server: start it with an admin token "
                                     "(TRADEUP_ADMIN_TOKEN or TRADEUP_ADMIN_TOKEN_FILE) to enable it",
                                     reason="ADMIN_DISABLED")
        if not authorization:
            raise Unauthenticated("admin calls need `authorization: Bearer <token>` metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise PermissionDenied("the admin token is not valid")

    def config(self) -> tuple[dict[str, Any], dict[str, str], int]:
        """(effective configuration with secrets redacted, key path -> source, configuration version)."""
        current = self.settings.current
        return current.to_dict(redact=True), self.settings.sources(), current.version

    def update_business(self, changes: Mapping[str, Any], changed_by: str,
                        deadline: Deadline) -> tuple[dict[str, Any], int]:
        """Store the business parameters that change (validated together with every override in
        the database, under its lock), apply them here and tell every process.
        Returns (the business parameters now in effect, the configuration version)."""
        if not changes:
            raise InvalidArgument("must change at least one business parameter", "changes")
        try:
            requested = flatten({"business": dict(changes)})
        except ConfigError as exc:
            raise InvalidArgument(_reason(exc), "changes") from None
        version_now = self.settings.current.version

        def build(stored: dict[str, Any]) -> dict[str, Any]:
            return flatten({"business": self.settings.build(stored, version_now).business.to_dict()})

        def decide(stored: dict[str, Any]) -> dict[str, Any]:
            before = build(stored)
            try:
                after = build({**stored, **requested})
            except ConfigError:  # every wrong change, not only the first
                found = Violations()
                for exc in change_errors(lambda given: build({**stored, **given}), requested, ConfigError,
                                         lambda exc: exc.key):
                    found.add(_field(exc), _reason(exc))
                found.check()
                raise
            unknown = Violations()
            for path in requested:
                if path not in after:
                    unknown.add("changes." + path.removeprefix("business."), "is not a business parameter")
            unknown.check()
            return {path: (before.get(path), value) for path, value in after.items() if before.get(path) != value}

        try:
            version, _ = self.repository.write_config(changed_by[:128], decide, deadline)
        except ConfigError as exc:
            raise InvalidArgument(_reason(exc), _field(exc)) from None
        self.feed.changed(CONFIG, version, deadline)
        return self.settings.current.business.to_dict(), self.settings.current.version

    def history(self, key_prefix: str, limit: int, deadline: Deadline) -> list[ConfigChange]:
        if limit < 0 or limit > MAX_HISTORY:
            raise InvalidArgument(f"must be within 0..{MAX_HISTORY} (0: 100), got {limit}", "limit")
        if len(key_prefix) > 191 or not key_prefix.isprintable():
            raise InvalidArgument("must be at most 191 printable characters", "key_prefix")
        return self.repository.config_history(key_prefix, limit or 100, deadline)

    def invalidate_caches(self, deadline: Deadline) -> tuple[int, int]:
        """(entries dropped in this process, the new inventory version); every process reloads."""
        return self.feed.invalidate(deadline)

    def status(self) -> dict[str, Any]:
        in_use, idle = self.repository.database.pool_status()
        return {"version": VERSION, "engine_implementation": self.engine_implementation,
                "database_backend": self.repository.backend, "database_reachable": self.database_reachable(),
                "circuit_state": self.repository.breaker.state, "pool_in_use": in_use, "pool_idle": idle,
                "uptime_seconds": time.monotonic() - self.started, **self.inventory.status(), **self.feed.status(),
                **self.watch_status()}
