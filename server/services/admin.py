"""Administration: effective configuration, runtime business parameters, caches, status."""
from __future__ import annotations

import hmac
import time
from typing import Any, Callable, Mapping

from ..config import SettingsStore
from ..data.inventory import InventoryCache
from ..data.repository import Repository
from ..errors import ConfigError, FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated

VERSION = "0.1.0"


class AdminService:
    def __init__(self, settings: SettingsStore, repository: Repository, inventory: InventoryCache,
                 engine_implementation: str, database_reachable: Callable[[], bool]):
        self.settings = settings
        self.repository = repository
        self.inventory = inventory
        self.engine_implementation = engine_implementation
        self.database_reachable = database_reachable
        self.started = time.monotonic()

    def authorize(self, authorization: str | None) -> None:
        """`authorization: Bearer <token>` must carry the configured admin token."""
        expected = self.settings.current.server.admin_token
        if not expected:
            raise FailedPrecondition("admin is disabled on this server: start it with an admin token "
                                     "(TRADEUP_ADMIN_TOKEN or TRADEUP_ADMIN_TOKEN_FILE) to enable it")
        if not authorization:
            raise Unauthenticated("admin calls need `authorization: Bearer <token>` metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise PermissionDenied("the admin token is not valid")

    def config(self) -> dict[str, Any]:
        return self.settings.current.to_dict(redact=True)

    def update_business(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        if not changes:
            raise InvalidArgument("must change at least one business parameter", "changes")
        try:
            return self.settings.update_business(changes).to_dict()
        except ConfigError as exc:
            path = exc.key.removeprefix("business").lstrip(".")
            raise InvalidArgument(str(exc).split(": ", 1)[-1], f"changes.{path}" if path else "changes") from None

    def invalidate_caches(self) -> int:
        return self.inventory.invalidate()

    def status(self) -> dict[str, Any]:
        in_use, idle = self.repository.database.pool_status()
        return {"version": VERSION, "engine_implementation": self.engine_implementation,
                "database_backend": self.repository.backend, "database_reachable": self.database_reachable(),
                "circuit_state": self.repository.breaker.state, "pool_in_use": in_use, "pool_idle": idle,
                "uptime_seconds": time.monotonic() - self.started, **self.inventory.status()}
