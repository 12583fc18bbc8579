"""Domain errors of the service. Services and data access raise these; one interceptor maps
them to gRPC status codes and the google.rpc error details (server/rpc/interceptors.py).

`code` is a grpc.StatusCode name; `reason` is the stable ErrorInfo reason clients branch on
(every one is listed in protos/tradeup/v1/offers.proto and the README: add new ones there)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

DOMAIN = "tradeup.v1"  # ErrorInfo.domain of every error


@dataclass(frozen=True)
class Violation:
    field: str        # the path of the field in the request, as in the .proto ("profile.region")
    description: str


@dataclass(frozen=True)
class Resource:
    """What a NOT_FOUND did not find."""
    type: str  # the proto message, e.g. "tradeup.v1.Car"
    name: str  # its id


def milliseconds(seconds: float) -> int:
    """A wait in whole milliseconds, rounded up (never 0: a caller told 0 would not wait)."""
    return max(1, math.ceil(seconds * 1000))


class ServiceError(Exception):
    code = "INTERNAL"
    reason = "INTERNAL"

    def __init__(self, message: str, field: str | None = None, *, reason: str | None = None,
                 violations: Iterable[Violation] = (), resource: Resource | None = None,
                 retry_after: float | None = None):
        """`violations`: every one of the request (default: the field's); `retry_after`:
        seconds, when the server knows how long the caller should wait."""
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        if reason is not None:
            self.reason = reason
        self.violations = tuple(violations) or ((Violation(field, message),) if field else ())
        self.resource = resource
        self.retry_after = retry_after


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"
    reason = "INVALID_REQUEST"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    """A dependency (the database) cannot be reached, or the circuit breaker is open."""
    code = "UNAVAILABLE"
    reason = "DATABASE_UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"
    reason = "ADMIN_TOKEN_MISSING"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"
    reason = "ADMIN_TOKEN_INVALID"


class Violations:
    """Every violation of a request, found in one pass: `add` each one, then `check()` raises a
    single error carrying them all, its message the first one's (what checking field by field
    used to say). A field is reported once, by the first check that finds it wrong (the request's
    reading and the service may both check it)."""

    def __init__(self, error: type[ServiceError] = InvalidArgument, reason: str | None = None):
        self.error = error
        self.reason = reason
        self.found: list[Violation] = []

    def add(self, field: str, description: str) -> None:
        if all(v.field != field for v in self.found):
            self.found.append(Violation(field, description))

    def check(self) -> None:
        if self.found:
            first = self.found[0]
            raise self.error(first.description, first.field, reason=self.reason, violations=self.found)


def violation(violations: Violations | None, field: str, description: str) -> None:
    """Note a violation in `violations`; without a collector, raise it on its own."""
    if violations is None:
        raise InvalidArgument(description, field)
    violations.add(field, description)


class ConfigError(ValueError):
    """Invalid configuration: raised at start-up, the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"configuration key {key}: {message}")
        self.key = key
