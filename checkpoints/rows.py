"""Small SQL helpers for the operational tables, on both dialects."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Boolean, ColumnElement, Executable, Select, Table, cast, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from checkpoints.backends.base import Backend

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IgnoredRow:
    """The row an :func:`insert_ignore` statement writes: its table and its values by column name."""

    table: Table
    values: Mapping[str, Any]


# The row of each insert_ignore statement alive, for a writer that binds it into a prebuilt statement of its own
# instead (``EventLog.append``: a wait's rows in the statement of the event that arms it).
_IGNORED: weakref.WeakKeyDictionary[Executable, IgnoredRow] = weakref.WeakKeyDictionary()


def insert_ignore(engine: AsyncEngine, table: Table, **values: Any) -> Executable:
    """``INSERT … ON CONFLICT DO NOTHING``: writing a row twice (a replayed node) changes nothing."""
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing()
    _IGNORED[statement] = IgnoredRow(table, values)
    return statement


def ignored_row(statement: Executable) -> IgnoredRow | None:
    """The row ``statement`` writes, if :func:`insert_ignore` built it."""
    return _IGNORED.get(statement)


# The integers SQLite binds (64-bit): a wanted number outside is compared in Python (it could match a real).
INT64 = range(-(2**63), 2**63)
_NUMBER_TYPES = ("integer", "real")  # json_each's types of JSON numbers (true and false are not)


def contains_json(found: Any, wanted: Any) -> bool:
    """Whether the JSON value ``found`` contains ``wanted``, as PostgreSQL's JSONB ``@>`` (the Agent Server's
    filters) decides: an object contains an object each of whose keys it has, with a value containing the wanted
    one (so a nested object matches in part); an array contains an array each of whose elements one of its own
    contains (in any order); any other value only an equal value of its JSON type (1 = 1.0, but true is not 1,
    and a wanted null is only null)."""
    if isinstance(wanted, dict):
        return isinstance(found, dict) and all(k in found and contains_json(found[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(found, list):
            return False
        # Scalars by their keys: scanning the array for each wanted element took 97 s for 20,000 of each.
        scalars = {key for f in found if (key := _scalar_key(f)) is not None}
        containers = [f for f in found if isinstance(f, dict | list)]
        return all(
            key in scalars if (key := _scalar_key(w)) is not None else any(contains_json(f, w) for f in containers)
            for w in wanted
        )
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        return isinstance(found, int | float) and not isinstance(found, bool) and found == wanted
    return type(found) is type(wanted) and found == wanted  # str, bool, None


def _scalar_key(value: Any) -> tuple[str, Any] | None:
    """A JSON scalar as a key equal to another's exactly when :func:`contains_json` finds one contains the other
    (a number by value, 1 = 1.0; a string, true or false, null by type and value); None for an object or array."""
    if isinstance(value, dict | list):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", value)
    return (type(value).__name__, value)


def holds_json(found: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> bool:
    """Whether the JSON object ``found`` (None: empty) contains ``wanted`` (:func:`contains_json`): each of its
    keys is there with a value containing the wanted one. A wanted None matches only a key that is there with
    null (``{"k": null}`` finds no object without ``k``)."""
    return contains_json(found or {}, wanted or {})


_SQLITE_KEYS = 32  # the wanted keys SQLite compares in the query; the others are compared in Python


@dataclass(frozen=True, slots=True)
class JsonHolds:
    """Rows whose JSON object column contains ``wanted`` (:func:`holds_json`: nested objects match in part,
    arrays by containment, a wanted None only null), as the searches of threads, assistants and crons filter
    by metadata.

    ``conditions`` select them in SQL: JSONB's ``@>`` on PostgreSQL; on SQLite, which has no containment of
    JSON, each wanted top-level key compared with ``json_each`` (a value of its JSON type). They are ``exact`` except
    on SQLite for a wanted object or array or a number beyond 64 bits: there they only narrow the rows (the key
    is there, of that type), and :meth:`holds` decides, so a caller then pages in Python (:meth:`page`). So too
    past the first ``_SQLITE_KEYS`` keys: a subquery per key of a 20,000-key filter took SQLAlchemy 100 s to
    compile, holding the server's one SQLite connection, and SQLite refused it (an expression over 1,000 deep)."""

    wanted: Mapping[str, Any]
    conditions: tuple[ColumnElement[bool], ...]
    exact: bool
    name: str  # the column's, in a row read

    @classmethod
    def of(cls, column: ColumnElement[Any], wanted: Mapping[str, Any] | None, *, postgres: bool) -> JsonHolds:
        wanted = dict(wanted or {})
        if postgres:
            contains = column.op("@>", return_type=Boolean)(cast(literal(json.dumps(wanted)), JSONB))
            return cls(wanted, (contains,) if wanted else (), True, column.key or "")
        conditions, exact = [], len(wanted) <= _SQLITE_KEYS
        for key, value in list(wanted.items())[:_SQLITE_KEYS]:
            each = func.json_each(column).table_valued("key", "value", "type").alias()
            entry = select(literal(1)).select_from(each).where(each.c.key == key)
            if value is None:  # there, with null
                conditions.append(entry.where(each.c.type == "null").exists())
            elif isinstance(value, str):
                conditions.append(entry.where(each.c.type == "text", each.c.value == value).exists())
            elif isinstance(value, bool):
                conditions.append(entry.where(each.c.type == ("true" if value else "false")).exists())
            elif isinstance(value, float) or (isinstance(value, int) and value in INT64):
                conditions.append(entry.where(each.c.type.in_(_NUMBER_TYPES), each.c.value == value).exists())
            else:
                kind = (
                    ("object",) if isinstance(value, dict) else ("array",) if isinstance(value, list) else _NUMBER_TYPES
                )
                conditions.append(entry.where(each.c.type.in_(kind)).exists())
                exact = False
        return cls(wanted, tuple(conditions), exact, column.key or "")

    def holds(self, found: Mapping[str, Any] | None) -> bool:
        """Whether a row's JSON object holds the wanted values (:func:`holds_json`)."""
        return holds_json(found, self.wanted)

    def page(
        self, rows: Sequence[T], metadata: Callable[[T], Mapping[str, Any] | None], limit: int | None, offset: int
    ) -> list[T]:
        """One page (``limit`` None: all from ``offset``) of the rows, read with :attr:`conditions` but not paged
        in SQL, that hold the wanted values."""
        found = [row for row in rows if self.holds(metadata(row))]
        return found[offset:] if limit is None else found[offset : offset + limit]


async def count_holding(
    backend: Backend,
    holds: JsonHolds,
    query: Select[Any],
    shown: Callable[[Mapping[str, Any]], Mapping[str, Any] | None] | None = None,
) -> int:
    """How many rows of ``query`` (filtered with ``holds``'s conditions) hold its wanted values: one COUNT, or
    where the conditions are not exact, the rows they leave, decided in Python on each row's JSON object
    (``shown``: the object a row shows, else its column's)."""
    if not holds.exact:
        return sum(holds.holds(shown(row) if shown else row[holds.name]) for row in await backend.query(query))
    found = await backend.query(select(func.count().label("n")).select_from(query.subquery()))
    return int(found[0]["n"])
