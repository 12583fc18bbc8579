from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _struct_pb2.Struct
    def __init__(self, config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateBusinessParametersRequest(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _struct_pb2.Struct
    def __init__(self, changes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateBusinessParametersResponse(_message.Message):
    __slots__ = ("business",)
    BUSINESS_FIELD_NUMBER: _ClassVar[int]
    business: _struct_pb2.Struct
    def __init__(self, business: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class InvalidateCacheRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvalidateCacheResponse(_message.Message):
    __slots__ = ("entries_removed",)
    ENTRIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    entries_removed: int
    def __init__(self, entries_removed: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("version", "engine_implementation", "database_backend", "database_reachable", "circuit_state", "pool_in_use", "pool_idle", "inventory_cars", "inventory_age_seconds", "prefilter_cache_entries", "cache_hits", "cache_misses", "cache_hit_rate", "uptime_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    DATABASE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    DATABASE_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_STATE_FIELD_NUMBER: _ClassVar[int]
    POOL_IN_USE_FIELD_NUMBER: _ClassVar[int]
    POOL_IDLE_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_CARS_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREFILTER_CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    engine_implementation: str
    database_backend: str
    database_reachable: bool
    circuit_state: str
    pool_in_use: int
    pool_idle: int
    inventory_cars: int
    inventory_age_seconds: float
    prefilter_cache_entries: int
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    uptime_seconds: float
    def __init__(self, version: _Optional[str] = ..., engine_implementation: _Optional[str] = ..., database_backend: _Optional[str] = ..., database_reachable: _Optional[bool] = ..., circuit_state: _Optional[str] = ..., pool_in_use: _Optional[int] = ..., pool_idle: _Optional[int] = ..., inventory_cars: _Optional[int] = ..., inventory_age_seconds: _Optional[float] = ..., prefilter_cache_entries: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., cache_hit_rate: _Optional[float] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...
