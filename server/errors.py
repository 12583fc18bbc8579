"""Domain errors of the service. Services and data access raise these; one interceptor maps
them to gRPC status codes (server/rpc/interceptors.py). `code` is a grpc.StatusCode name."""
from __future__ import annotations


class ServiceError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(ServiceError):
    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    """A dependency (the database) cannot be reached, or the circuit breaker is open."""
    code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class ConfigError(ValueError):
    """Invalid configuration: raised at start-up, the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"configuration key {key}: {message}")
        self.key = key
