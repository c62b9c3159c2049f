"""The store: LangGraph's ``BaseStore`` of this server's database (the one every graph's nodes reach with
``get_store()``), served on the Agent Server's ``/store`` endpoints in the shapes ``langgraph-sdk`` reads.

Items are JSON objects under a namespace (a path of labels) and a key. Search is by namespace prefix,
filter and (when the store was opened with an index) a natural-language query. On SQLite and PostgreSQL
stores an item put with a ``ttl`` (whole minutes, as PostgreSQL's store keeps them) expires that long after
it was last written or read (``checkpoints.savers.ttl_config``); ``memory://``'s has no TTLs and refuses one.

Each caller works in namespaces of its own (:class:`checkpoints.owned_store.OwnedStore`): what it puts goes
under its owner prefix, and it reads only its own space and its groups'; admins see the raw namespaces.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Response
from langgraph.store.base import Item, SearchItem
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres.aio import AsyncPostgresStore
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from checkpoints.owned_store import OwnedStore
from checkpoints.values import ValueLimits, check_value
from graphs.errors import InvalidInputError
from server.api import errors
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.models import MAX_INT
from server.routing import api_router
from server.services import ServerServices, services

router = api_router(prefix="/store", tags=["store"], responses=errors(), route_class=GuardedRoute)
Reader = Annotated[Principal, Depends(require("read"))]
Writer = Annotated[Principal, Depends(require("runs"))]
Services = Annotated[ServerServices, Depends(services)]
Label = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^.]*$")]  # a '.' joins labels in a query


class ItemOut(BaseModel):
    """An item of the store, as ``langgraph-sdk``'s ``Item`` (``score`` only in search answers)."""

    namespace: list[str]
    key: str
    value: dict[str, Any]
    created_at: str
    updated_at: str


class SearchItemOut(ItemOut):
    """An item found by a search; ``score`` when the query was ranked by an index."""

    score: float | None = None


class SearchItemsOut(BaseModel):
    """The answer of a search, as the SDK's ``SearchItemsResponse``."""

    items: list[SearchItemOut]


class NamespacesOut(BaseModel):
    """The answer of ``list_namespaces``, as the SDK's ``ListNamespaceResponse``."""

    namespaces: list[list[str]]


# The longest item TTL in minutes (about 1,000 years): beyond, an expiry time overflows the store's dates.
TTL_LIMIT = 525_600_000


def _whole_minutes(value: Any) -> Any:
    """5.0 is the integer 5 to JSON Schema (the document says ``integer``), so it is taken as 5; anything else
    goes to the strict check as it came (true, "5" and 0.5 are refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class PutItem(BaseModel):
    """An item to store or replace."""

    namespace: list[Label] = Field(min_length=1)
    key: str = Field(min_length=1, max_length=1000)
    value: dict[str, Any]
    index: Literal[False] | list[str] | None = None  # which fields to embed (with a configured index)
    ttl: Annotated[int | None, BeforeValidator(_whole_minutes)] = Field(
        None,
        strict=True,  # true is no TTL (lax validation took it for 1 minute); the Agent Server's schema refuses it
        gt=0,
        le=TTL_LIMIT,
        description="whole minutes until the item expires, restarted when it is read (unless refresh_ttl is "
        "false); a memory:// store has no TTLs and refuses one",
    )


class DeleteItem(BaseModel):
    """The item to delete."""

    namespace: list[Label] = Field(min_length=1)
    key: str = Field(min_length=1, max_length=1000)


# The comparison operators LangGraph's stores take in a filter ({"field": {"$gt": 3}}); a plain value is $eq.
FILTER_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"})
OPERATORS = sorted(FILTER_OPERATORS)
# The field names every store takes (the SQLite store refuses others with a ValueError), a nested field's path
# joined by '.' with no empty step (the SQLite store's JSON path '$..' failed as a 500): one rule on every store.
FILTER_FIELD_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
FILTER_FIELD = re.compile(FILTER_FIELD_PATTERN)
# What the schema states of a filter: a field's condition is a plain value or an object of operators only
# (validated by _check_filter, which names the operators in its 422; the schema says the same to clients).
FILTER_SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"pattern": FILTER_FIELD_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {"type": ["string", "number", "boolean", "null"]},
                    {"type": "array"},
                    {"type": "object", "properties": {op: {} for op in OPERATORS}, "additionalProperties": False},
                ]
            },
        },
        {"type": "null"},
    ],
    "description": "field: a plain value (equality) or an object of operators " + ", ".join(OPERATORS) + "; a "
    "nested field is named by its path ('a.b')",
}


class SearchItems(BaseModel):
    """Which items to find: under a namespace prefix, by filter and optionally by a query."""

    namespace_prefix: list[Label] = Field(default_factory=list)
    filter: Annotated[dict[str, Any] | None, WithJsonSchema(FILTER_SCHEMA)] = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_INT)
    query: str | None = None
    refresh_ttl: bool | None = None


class ListNamespaces(BaseModel):
    """Which namespaces to list: by prefix, suffix and depth."""

    prefix: list[Label] | None = None  # labels as stored: a '.' in one is refused (422), as in an item's namespace
    suffix: list[Label] | None = None
    max_depth: int | None = Field(None, ge=1, le=100)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_INT)


def _item(item: Item | SearchItem) -> dict[str, Any]:
    """The item as the SDK reads it, its times with their UTC offset (the SQLite store's are naive UTC, from
    ``CURRENT_TIMESTAMP``, which a JavaScript client would read as local time)."""
    answer = item.dict()
    for name in ("created_at", "updated_at"):
        when: datetime = getattr(item, name)
        if when.tzinfo is None:
            answer[name] = when.replace(tzinfo=UTC).isoformat()
    return answer


def _owned(svc: ServerServices, caller: Principal) -> OwnedStore:
    """The store as ``caller`` sees it."""
    return OwnedStore(svc.runtime.store.graph_store, svc.owner(caller), svc.viewer(caller))


def _namespace(dotted: str) -> tuple[str, ...]:
    labels = tuple(dotted.split("."))
    if not all(labels):
        raise InvalidInputError(f"namespace {dotted!r}: labels are joined by '.', and none may be empty")
    return labels


def _storable(svc: ServerServices, value: Any, where: str) -> None:
    """Refuse (422) a value the stores cannot encode: the SQLite and PostgreSQL stores write JSON with orjson,
    which takes no integer beyond 64 bits (a TypeError, a 500, after the request was taken)."""
    check_value(value, where, limits=ValueLimits(svc.settings.limits.max_depth), subject="the request body at")


@router.put("/items", status_code=204, response_class=Response, summary="Store or update an item")
async def put_item(body: PutItem, caller: Writer, svc: Services) -> Response:
    _storable(svc, body.value, "body.value")
    await _owned(svc, caller).put(tuple(body.namespace), body.key, body.value, index=body.index, ttl=body.ttl)
    return Response(status_code=204)


@router.get("/items", response_model=ItemOut | None, summary="Get an item (null when there is none)")
async def get_item(
    caller: Reader,
    svc: Services,
    key: Annotated[str, Query(min_length=1, max_length=1000)],
    namespace: Annotated[
        str, Query(min_length=1, max_length=2000, pattern=r"^[^.]+(\.[^.]+)*$", description="labels joined by '.'")
    ],
    refresh_ttl: Annotated[bool | None, Query(description="false: this read does not restart the item's TTL")] = None,
) -> dict[str, Any] | None:
    item = await _owned(svc, caller).get(_namespace(namespace), key, refresh_ttl=refresh_ttl)
    return None if item is None else _item(item)


@router.delete("/items", status_code=204, response_class=Response, summary="Delete an item")
async def delete_item(body: DeleteItem, caller: Writer, svc: Services) -> Response:
    await _owned(svc, caller).delete(tuple(body.namespace), body.key)
    return Response(status_code=204)


def _check_filter(filter: dict[str, Any] | None) -> None:
    for field, condition in (filter or {}).items():
        if not FILTER_FIELD.fullmatch(field):
            raise InvalidInputError(
                f"filter on {field!r}: a field name holds letters, digits, '_' and '-', and '.' between the names "
                "of a nested field's path only",
                field=field,
            )
        if isinstance(condition, dict) and (unknown := set(condition) - FILTER_OPERATORS):
            # LangGraph's memory store alone takes a nested object; the others read its keys as operators.
            path = "" if any(name.startswith("$") for name in unknown) else f"{field}.{next(iter(condition))}"
            raise InvalidInputError(
                f"filter on {field!r}: unknown operator(s) {sorted(unknown)}; use {sorted(FILTER_OPERATORS)} "
                "or a plain value (equality)" + (f"; a nested field is named by its path, as {path!r}" if path else ""),
                field=field,
            )


def _store_filter(svc: ServerServices, filter: dict[str, Any] | None) -> dict[str, Any] | None:
    """The filter as the store takes it, a nested field named by its path ('a.b') on every store: the SQLite
    store reads it as a JSON path, PostgreSQL's conditions as one too (checkpoints.savers.sqlite_filters) but
    not its plain values (given as $eq), and LangGraph's memory store matches nested objects ({"a": {"b": ...}})."""
    if not filter or not any("." in field for field in filter):
        return filter
    store = svc.runtime.store.graph_store
    if isinstance(store, AsyncPostgresStore):
        return {f: c if "." not in f or isinstance(c, dict) else {"$eq": c} for f, c in filter.items()}
    if not isinstance(store, InMemoryStore):
        return filter
    nested: dict[str, Any] = {}
    for field, condition in sorted(filter.items()):  # a field before the fields inside it
        *parents, leaf = field.split(".")
        level = nested
        for name in parents:
            level = level.setdefault(name, {})
            if not isinstance(level, dict) or set(level) & FILTER_OPERATORS:
                raise InvalidInputError(
                    f"filter on {field!r}: a memory store cannot filter on a field and on a field inside it at "
                    "once; filter on one of them",
                    field=field,
                )
        level[leaf] = condition
    return nested


@router.post("/items/search", response_model=SearchItemsOut, summary="Search items under a namespace prefix")
async def search_items(body: SearchItems, caller: Reader, svc: Services) -> dict[str, Any]:
    _storable(svc, body.filter, "body.filter")  # compared as the stores encode them
    _check_filter(body.filter)
    found = await _owned(svc, caller).search(
        tuple(body.namespace_prefix),
        query=body.query,
        filter=_store_filter(svc, body.filter),
        limit=body.limit,
        offset=body.offset,
        refresh_ttl=body.refresh_ttl,
    )
    return {"items": [_item(item) for item in found]}


@router.post("/namespaces", response_model=NamespacesOut, summary="List namespaces")
async def list_namespaces(body: ListNamespaces, caller: Reader, svc: Services) -> dict[str, Any]:
    found = await _owned(svc, caller).list_namespaces(
        prefix=tuple(body.prefix) if body.prefix else None,
        suffix=tuple(body.suffix) if body.suffix else None,
        max_depth=body.max_depth,
        limit=body.limit,
        offset=body.offset,
    )
    return {"namespaces": [list(namespace) for namespace in found]}
