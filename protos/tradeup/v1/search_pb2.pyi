from protos.tradeup.v1 import offers_pb2 as _offers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchInventoryRequest(_message.Message):
    __slots__ = ("query", "filters", "order_by", "page_size", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    filters: _offers_pb2.ConsiderationFilters
    order_by: str
    page_size: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., filters: _Optional[_Union[_offers_pb2.ConsiderationFilters, _Mapping]] = ..., order_by: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class InventoryCar(_message.Message):
    __slots__ = ("car_id", "brand", "model", "year", "kilometers", "price", "regular_price", "on_promotion", "region", "color")
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    KILOMETERS_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    REGULAR_PRICE_FIELD_NUMBER: _ClassVar[int]
    ON_PROMOTION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    car_id: str
    brand: str
    model: str
    year: int
    kilometers: int
    price: float
    regular_price: float
    on_promotion: bool
    region: str
    color: str
    def __init__(self, car_id: _Optional[str] = ..., brand: _Optional[str] = ..., model: _Optional[str] = ..., year: _Optional[int] = ..., kilometers: _Optional[int] = ..., price: _Optional[float] = ..., regular_price: _Optional[float] = ..., on_promotion: _Optional[bool] = ..., region: _Optional[str] = ..., color: _Optional[str] = ...) -> None: ...

class SearchInventoryResponse(_message.Message):
    __slots__ = ("cars", "next_page_token", "total_size", "inventory_version")
    CARS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    cars: _containers.RepeatedCompositeFieldContainer[InventoryCar]
    next_page_token: str
    total_size: int
    inventory_version: int
    def __init__(self, cars: _Optional[_Iterable[_Union[InventoryCar, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ..., inventory_version: _Optional[int] = ...) -> None: ...

class InventoryFacetsRequest(_message.Message):
    __slots__ = ("filters", "query")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    filters: _offers_pb2.ConsiderationFilters
    query: str
    def __init__(self, filters: _Optional[_Union[_offers_pb2.ConsiderationFilters, _Mapping]] = ..., query: _Optional[str] = ...) -> None: ...

class FacetCount(_message.Message):
    __slots__ = ("value", "count")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    value: str
    count: int
    def __init__(self, value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class YearCount(_message.Message):
    __slots__ = ("year", "count")
    YEAR_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    year: int
    count: int
    def __init__(self, year: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class PriceStats(_message.Message):
    __slots__ = ("min", "q1", "median", "q3", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    Q1_FIELD_NUMBER: _ClassVar[int]
    MEDIAN_FIELD_NUMBER: _ClassVar[int]
    Q3_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    q1: float
    median: float
    q3: float
    max: float
    def __init__(self, min: _Optional[float] = ..., q1: _Optional[float] = ..., median: _Optional[float] = ..., q3: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class InventoryFacetsResponse(_message.Message):
    __slots__ = ("total_cars", "brands", "years", "prices", "regions", "colors", "promotion_count", "inventory_version")
    TOTAL_CARS_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    YEARS_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    COLORS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    total_cars: int
    brands: _containers.RepeatedCompositeFieldContainer[FacetCount]
    years: _containers.RepeatedCompositeFieldContainer[YearCount]
    prices: PriceStats
    regions: _containers.RepeatedCompositeFieldContainer[FacetCount]
    colors: _containers.RepeatedCompositeFieldContainer[FacetCount]
    promotion_count: int
    inventory_version: int
    def __init__(self, total_cars: _Optional[int] = ..., brands: _Optional[_Iterable[_Union[FacetCount, _Mapping]]] = ..., years: _Optional[_Iterable[_Union[YearCount, _Mapping]]] = ..., prices: _Optional[_Union[PriceStats, _Mapping]] = ..., regions: _Optional[_Iterable[_Union[FacetCount, _Mapping]]] = ..., colors: _Optional[_Iterable[_Union[FacetCount, _Mapping]]] = ..., promotion_count: _Optional[int] = ..., inventory_version: _Optional[int] = ...) -> None: ...

class SearchCustomersRequest(_message.Message):
    __slots__ = ("id_prefix", "text", "region", "risk_profile", "order_by", "page_size", "page_token")
    ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    RISK_PROFILE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id_prefix: str
    text: str
    region: str
    risk_profile: str
    order_by: str
    page_size: int
    page_token: str
    def __init__(self, id_prefix: _Optional[str] = ..., text: _Optional[str] = ..., region: _Optional[str] = ..., risk_profile: _Optional[str] = ..., order_by: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchCustomersResponse(_message.Message):
    __slots__ = ("customers", "next_page_token")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[_offers_pb2.CustomerProfile]
    next_page_token: str
    def __init__(self, customers: _Optional[_Iterable[_Union[_offers_pb2.CustomerProfile, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
