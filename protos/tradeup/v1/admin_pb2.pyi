import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config", "sources", "config_version")
    class SourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    config: _struct_pb2.Struct
    sources: _containers.ScalarMap[str, str]
    config_version: int
    def __init__(self, config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sources: _Optional[_Mapping[str, str]] = ..., config_version: _Optional[int] = ...) -> None: ...

class UpdateBusinessParametersRequest(_message.Message):
    __slots__ = ("changes", "changed_by")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    changes: _struct_pb2.Struct
    changed_by: str
    def __init__(self, changes: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., changed_by: _Optional[str] = ...) -> None: ...

class UpdateBusinessParametersResponse(_message.Message):
    __slots__ = ("business", "config_version")
    BUSINESS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    business: _struct_pb2.Struct
    config_version: int
    def __init__(self, business: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., config_version: _Optional[int] = ...) -> None: ...

class GetConfigHistoryRequest(_message.Message):
    __slots__ = ("key_prefix", "limit")
    KEY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key_prefix: str
    limit: int
    def __init__(self, key_prefix: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ConfigChange(_message.Message):
    __slots__ = ("version", "key", "old_value", "new_value", "changed_at", "changed_by")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    version: int
    key: str
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    changed_at: _timestamp_pb2.Timestamp
    changed_by: str
    def __init__(self, version: _Optional[int] = ..., key: _Optional[str] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed_by: _Optional[str] = ...) -> None: ...

class GetConfigHistoryResponse(_message.Message):
    __slots__ = ("changes",)
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[ConfigChange]
    def __init__(self, changes: _Optional[_Iterable[_Union[ConfigChange, _Mapping]]] = ...) -> None: ...

class InvalidateCacheRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvalidateCacheResponse(_message.Message):
    __slots__ = ("entries_removed", "inventory_version")
    ENTRIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    entries_removed: int
    inventory_version: int
    def __init__(self, entries_removed: _Optional[int] = ..., inventory_version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("version", "engine_implementation", "database_backend", "database_reachable", "circuit_state", "pool_in_use", "pool_idle", "inventory_cars", "inventory_age_seconds", "prefilter_cache_entries", "cache_hits", "cache_misses", "cache_hit_rate", "uptime_seconds", "config_version", "inventory_version", "redis_state", "watchers", "watch_groups")
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
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REDIS_STATE_FIELD_NUMBER: _ClassVar[int]
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    WATCH_GROUPS_FIELD_NUMBER: _ClassVar[int]
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
    config_version: int
    inventory_version: int
    redis_state: str
    watchers: int
    watch_groups: int
    def __init__(self, version: _Optional[str] = ..., engine_implementation: _Optional[str] = ..., database_backend: _Optional[str] = ..., database_reachable: _Optional[bool] = ..., circuit_state: _Optional[str] = ..., pool_in_use: _Optional[int] = ..., pool_idle: _Optional[int] = ..., inventory_cars: _Optional[int] = ..., inventory_age_seconds: _Optional[float] = ..., prefilter_cache_entries: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., cache_hit_rate: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., config_version: _Optional[int] = ..., inventory_version: _Optional[int] = ..., redis_state: _Optional[str] = ..., watchers: _Optional[int] = ..., watch_groups: _Optional[int] = ...) -> None: ...
