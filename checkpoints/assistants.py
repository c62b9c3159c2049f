"""Assistants as rows: a graph with its own config, context and metadata, versioned.

Every create and update writes a version row; the assistant's row holds the version in use, which
``set_latest`` may move back to an earlier one. The built-in patterns are system assistants the server
knows from the pattern registry: they have no rows here.

An assistant records its owner, tenant and shared group (:mod:`checkpoints.ownership`); every read,
search and change takes a ``viewer`` and filters by it in the query, so a caller finds only the
assistants it may see (None: no filter, for the runtime's own reads).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, insert, select, update

from checkpoints.backends.base import Backend, Row
from checkpoints.clock import Clock
from checkpoints.errors import AssistantExistsError, AssistantNotFoundError
from checkpoints.ownership import Owner, Viewer, visible_to
from checkpoints.rows import JsonHolds, count_holding, holds_json
from checkpoints.schema.tables import server_assistant_versions, server_assistants

_a, _v = server_assistants.c, server_assistant_versions.c


@dataclass(frozen=True, slots=True)
class AssistantRow:
    """One version of an assistant (for the assistant itself: the version in use, and when it last changed)."""

    assistant_id: str
    graph_id: str
    name: str
    description: str | None
    config: dict[str, Any]
    context: dict[str, Any]
    metadata: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    tenant: str | None = None
    shared_group: str | None = None


_TEXT_ORDER = frozenset({"assistant_id", "graph_id", "name"})  # sorted by code point (collation "C") on PostgreSQL
_VERSION_FIELDS = ("graph_id", "name", "description", "config", "context", "metadata")
_GET = select(server_assistants).where(_a.assistant_id == bindparam("p_id"))
# An update reads the assistant it changes under this lock, so updates made at once take turns (SQLite has no row
# locks: there its transactions take turns on the saver's connection).
_LOCKED = _GET.with_for_update()
_GET_VERSION = select(server_assistant_versions).where(
    _v.assistant_id == bindparam("p_id"), _v.version == bindparam("p_version")
)
_MAX_VERSION = select(func.max(_v.version).label("v")).where(_v.assistant_id == bindparam("p_id"))
_VERSIONS = select(server_assistant_versions).where(_v.assistant_id == bindparam("p_id")).order_by(_v.version.desc())
_INSERT = insert(server_assistants)
_INSERT_VERSION = insert(server_assistant_versions)
_SET = update(server_assistants).where(_a.assistant_id == bindparam("p_id"))
_DELETE = delete(server_assistants).where(_a.assistant_id == bindparam("p_id")).returning(_a.assistant_id)
_DELETE_VERSIONS = delete(server_assistant_versions).where(_v.assistant_id == bindparam("p_id"))


def _row(found: Row, updated_at: datetime | None = None) -> AssistantRow:
    return AssistantRow(
        assistant_id=found["assistant_id"],
        graph_id=found["graph_id"],
        name=found["name"],
        description=found["description"],
        config=dict(found["config"] or {}),
        context=dict(found["context"] or {}),
        metadata=dict(found["metadata"] or {}),
        version=int(found["version"]),
        created_at=found["created_at"],
        updated_at=updated_at or found.get("updated_at") or found["created_at"],
        owner=found.get("owner"),
        tenant=found.get("tenant"),
        shared_group=found.get("shared_group"),
    )


def _visible(query: Select[Any], viewer: Viewer | None) -> Select[Any]:
    """Only the assistants ``viewer`` may see (an unchanged query for None)."""
    if viewer is None:
        return query
    return query.where(visible_to(viewer, _a.owner, _a.tenant, _a.shared_group))


def _matching(query: Select[Any], graph_id: str | None, name: str | None) -> Select[Any]:
    if graph_id is not None:
        query = query.where(_a.graph_id == graph_id)
    if name is not None:
        # Whatever its case, in every script and on every backend: folded names; '%' and '_' match themselves.
        query = query.where(_a.name_key.contains(name.casefold(), autoescape=True))
    return query


@dataclass(frozen=True, slots=True)
class AssistantFilter:
    """Which assistants a search or count takes: on ``graph_id`` (and one of ``graphs``, None: any), whose name
    contains ``name`` (whatever its case) and whose metadata holds ``metadata``."""

    graph_id: str | None = None
    name: str | None = None
    metadata: Mapping[str, Any] | None = None
    graphs: Collection[str] | None = None


class AssistantStore:
    """The assistants callers created, with every version of each."""

    def __init__(self, backend: Backend, clock: Clock) -> None:
        self._backend = backend
        self._clock = clock

    async def create(
        self,
        *,
        assistant_id: str | None,
        graph_id: str,
        name: str,
        description: str | None,
        config: Mapping[str, Any],
        context: Mapping[str, Any],
        metadata: Mapping[str, Any],
        owner: Owner | None,
        if_exists: str = "raise",
        viewer: Viewer | None = None,
    ) -> AssistantRow:
        """A new assistant at version 1, owned by ``owner``; with ``if_exists="do_nothing"`` an existing one
        ``viewer`` may see is answered as it is (one it may not see is refused as existing: ids are global)."""
        if assistant_id is not None and (existing := await self.get(assistant_id)) is not None:
            if if_exists == "do_nothing" and (viewer is None or viewer.may_see(*_owned(existing))):
                return existing
            raise AssistantExistsError(f"assistant {assistant_id!r} exists already", assistant_id=assistant_id)
        now = self._clock.now()
        row = AssistantRow(
            str(assistant_id or uuid.uuid4()),
            graph_id,
            name,
            description,
            dict(config),
            dict(context),
            dict(metadata),
            1,
            now,
            now,
            **(owner.values() if owner else {}),
        )
        async with self._backend.transaction() as tx:
            values = {f: getattr(row, f) for f in AssistantRow.__slots__}
            await tx.execute(_INSERT, {**values, "name_key": row.name.casefold()})
            await tx.execute(_INSERT_VERSION, self._version_params(row, now))
        return row

    @staticmethod
    def _version_params(row: AssistantRow, at: datetime) -> dict[str, Any]:
        fields = {f: getattr(row, f) for f in _VERSION_FIELDS}
        return {"assistant_id": row.assistant_id, "version": row.version, "created_at": at, **fields}

    async def get(self, assistant_id: str, *, viewer: Viewer | None = None) -> AssistantRow | None:
        """The assistant, or None when there is none ``viewer`` may see."""
        params = {"p_id": assistant_id}
        found = await (
            self._backend.read(_GET, params) if viewer is None else self._backend.query(_visible(_GET, viewer), params)
        )
        return _row(found[0]) if found else None

    async def require(self, assistant_id: str, *, viewer: Viewer | None = None) -> AssistantRow:
        """The assistant ``viewer`` may see; not found (as if there were none) otherwise."""
        found = await self.get(assistant_id, viewer=viewer)
        if found is None:
            raise AssistantNotFoundError(f"no assistant {assistant_id!r}", assistant_id=assistant_id)
        return found

    async def search(
        self,
        where: AssistantFilter,
        *,
        viewer: Viewer | None = None,
        sort_by: str = "created_at",
        descending: bool = True,
        limit: int | None = None,
    ) -> list[AssistantRow]:
        """The first ``limit`` (None: all) assistants ``viewer`` may see that ``where`` takes, in ``sort_by``
        order (ties by id), filtered and limited in the query (strings in Python's order of code points, on
        both dialects)."""
        holds, query = self._where(where, viewer)
        order, key = self._order(sort_by), self._order("assistant_id")
        query = query.order_by(order.desc() if descending else order.asc(), key.desc() if descending else key)
        if holds.exact:
            return [_row(found) for found in await self._backend.query(query.limit(limit))]
        rows = [_row(found) for found in await self._backend.query(query)]
        return holds.page(rows, lambda r: r.metadata, limit, 0)

    async def count(self, where: AssistantFilter, *, viewer: Viewer | None = None) -> int:
        """How many assistants :meth:`search` would find, counted in the query."""
        return await count_holding(self._backend, *self._where(where, viewer))

    def _where(self, where: AssistantFilter, viewer: Viewer | None) -> tuple[JsonHolds, Select[Any]]:
        holds = JsonHolds.of(_a.metadata, where.metadata, postgres=self._backend.postgres)
        query = _matching(_visible(select(server_assistants), viewer), where.graph_id, where.name)
        query = query.where(*holds.conditions)
        return holds, query if where.graphs is None else query.where(_a.graph_id.in_(list(where.graphs)))

    def _order(self, sort_by: str) -> Any:
        column = _a[sort_by]
        return column.collate("C") if self._backend.postgres and sort_by in _TEXT_ORDER else column

    async def update(self, assistant_id: str, *, viewer: Viewer | None = None, **changes: Any) -> AssistantRow:
        """A new version with ``changes`` (any of graph_id, name, description, config, context; metadata is
        merged into the current one), made the version in use."""
        await self.require(assistant_id, viewer=viewer)
        now = self._clock.now()
        async with self._backend.transaction() as tx:
            # Read again under the lock: an update made meanwhile is merged into, not overwritten, and the next
            # version number is not taken twice.
            locked = await tx.execute(_LOCKED, {"p_id": assistant_id})
            if not locked:  # deleted since
                raise AssistantNotFoundError(f"no assistant {assistant_id!r}", assistant_id=assistant_id)
            current = _row(locked[0])
            merged = {f: getattr(current, f) for f in _VERSION_FIELDS}
            merged.update({k: v for k, v in changes.items() if k != "metadata" and v is not None})
            merged["metadata"] = {**current.metadata, **(changes.get("metadata") or {})}
            top = await tx.execute(_MAX_VERSION, {"p_id": assistant_id})
            version = int(top[0]["v"] or 0) + 1
            row = AssistantRow(
                assistant_id,
                version=version,
                created_at=current.created_at,
                updated_at=now,
                owner=current.owner,
                tenant=current.tenant,
                shared_group=current.shared_group,
                **merged,
            )
            await tx.execute(_INSERT_VERSION, self._version_params(row, now))
            await tx.execute(_SET.values(version=version, updated_at=now, **_named(merged)), {"p_id": assistant_id})
        return row

    async def versions(
        self,
        assistant_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
        viewer: Viewer | None = None,
    ) -> list[AssistantRow]:
        """Every version of the assistant, newest first."""
        await self.require(assistant_id, viewer=viewer)
        rows = [_row(found) for found in await self._backend.read(_VERSIONS, {"p_id": assistant_id})]
        if metadata:
            rows = [r for r in rows if holds_json(r.metadata, metadata)]
        return rows[offset : offset + limit]

    async def set_latest(self, assistant_id: str, version: int, *, viewer: Viewer | None = None) -> AssistantRow:
        """Make an earlier (or later) version the one in use."""
        current = await self.require(assistant_id, viewer=viewer)
        found = await self._backend.read(_GET_VERSION, {"p_id": assistant_id, "p_version": version})
        if not found:
            raise AssistantNotFoundError(
                f"assistant {assistant_id!r} has no version {version}", assistant_id=assistant_id, version=version
            )
        chosen = _row(found[0])
        now = self._clock.now()
        fields = {f: getattr(chosen, f) for f in _VERSION_FIELDS}
        await self._backend.execute(
            _SET.values(version=version, updated_at=now, **_named(fields)), {"p_id": assistant_id}
        )
        return AssistantRow(
            assistant_id,
            version=version,
            created_at=current.created_at,
            updated_at=now,
            owner=current.owner,
            tenant=current.tenant,
            shared_group=current.shared_group,
            **fields,
        )

    async def delete(self, assistant_id: str, *, viewer: Viewer | None = None) -> None:
        await self.require(assistant_id, viewer=viewer)
        async with self._backend.transaction() as tx:
            # Two statements, the assistant's first: it waits for an update under way (which holds its row), and
            # the versions' own snapshot, taken after, sees the version that update added (one statement's
            # snapshot, taken before the wait, left it behind).
            if not await tx.execute(_DELETE, {"p_id": assistant_id}):  # another delete took it since require
                raise AssistantNotFoundError(f"no assistant {assistant_id!r}", assistant_id=assistant_id)
            await tx.execute(_DELETE_VERSIONS, {"p_id": assistant_id})


def _named(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An assistant's version fields, with its name's folded key for the assistant's row."""
    return {**fields, "name_key": str(fields["name"]).casefold()}


def _owned(row: AssistantRow) -> tuple[str | None, str | None, str | None]:
    return row.owner, row.tenant, row.shared_group
