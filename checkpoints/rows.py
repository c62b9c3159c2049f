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
from checkpoints.errors import FilterTooCostlyError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IgnoredRow:
    """A row written with ``INSERT … ON CONFLICT DO NOTHING`` (writing it twice, a replayed node's, changes nothing):
    its table and its values by column name. Its statement is built only for a writer that runs one
    (:meth:`statement`): ``EventLog.append`` binds the rows of a wait it arms into a prebuilt statement of its own on
    PostgreSQL, and SQLAlchemy's insert of a wait's and a timer's values, built for nothing there, was a twentieth of
    the CPU of a start that parks on a timer (130 us)."""

    table: Table
    values: Mapping[str, Any]

    def statement(self, engine: AsyncEngine) -> Executable:
        """The row's ``INSERT … ON CONFLICT DO NOTHING`` for ``engine``'s dialect."""
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        statement = insert(self.table).values(**self.values).on_conflict_do_nothing()
        _IGNORED[statement] = self
        return statement


# What a store's ``execute`` takes: a statement, or a row it inserts (its statement built only if it runs one).
Write = Executable | IgnoredRow

# The row of each insert_ignore statement alive, for a writer that binds it into a prebuilt statement of its own
# instead (``EventLog.append``: a wait's rows in the statement of the event that arms it).
_IGNORED: weakref.WeakKeyDictionary[Executable, IgnoredRow] = weakref.WeakKeyDictionary()


def insert_ignore(engine: AsyncEngine, table: Table, **values: Any) -> Executable:
    """``INSERT … ON CONFLICT DO NOTHING``: writing a row twice (a replayed node) changes nothing."""
    return IgnoredRow(table, values).statement(engine)


def ignored_row(statement: Executable | IgnoredRow) -> IgnoredRow | None:
    """The row ``statement`` writes, if it is one or :func:`insert_ignore` built it."""
    return statement if isinstance(statement, IgnoredRow) else _IGNORED.get(statement)


def executable(statement: Executable | IgnoredRow, engine: AsyncEngine) -> Executable:
    """``statement``, or the row's statement for ``engine``."""
    return statement.statement(engine) if isinstance(statement, IgnoredRow) else statement


# The integers SQLite binds (64-bit): a wanted number outside is compared in Python (it could match a real).
INT64 = range(-(2**63), 2**63)
_NUMBER_TYPES = ("integer", "real")  # json_each's types of JSON numbers (true and false are not)


# The work (values compared, elements indexed) one containment test may do: this floor, and this much for each
# element of each object and array it meets. Arrays of objects or arrays are compared element by element, which
# a hostile pair can make quadratic (3,000 objects each way took 12 s on the server's loop); past the allowance
# the test is refused (FilterTooCostlyError), so its cost stays linear in the JSON it reads.
_WORK_FLOOR = 100_000
_WORK_PER_ELEMENT = 32


def contains_json(found: Any, wanted: Any) -> bool:
    """Whether the JSON value ``found`` contains ``wanted``, as PostgreSQL's JSONB ``@>`` (the Agent Server's
    filters) decides: an object contains an object each of whose keys it has, with a value containing the wanted
    one (so a nested object matches in part); an array contains an array each of whose elements one of its own
    contains (in any order); any other value only an equal value of its JSON type (1 = 1.0, but true is not 1,
    and a wanted null is only null).

    Raises :class:`FilterTooCostlyError` when deciding would take more than a bounded work, linear in the sizes
    of both values (see :data:`_WORK_PER_ELEMENT`)."""
    return _Containment().contains(found, wanted)


@dataclass(slots=True)
class _ArrayIndex:
    """A stored array's elements by what a wanted element can be looked up by: its scalars by :func:`_scalar_key`;
    its objects by each key they have and each key with its scalar value; its arrays by each scalar they hold;
    and its objects and arrays by their canonical JSON (a wanted one equal to one of them is contained)."""

    scalars: set[tuple[str, Any]]
    canonical: set[str]
    objects: list[dict[str, Any]]
    objects_by_term: dict[tuple[Any, ...], list[dict[str, Any]]]
    arrays: list[list[Any]]
    arrays_by_scalar: dict[tuple[str, Any], list[list[Any]]]


class _Containment:
    """One :func:`contains_json` test: its work left, and the indexes of the stored arrays it has met."""

    __slots__ = ("_canonical", "_granted", "_indexes", "_left")

    def __init__(self) -> None:
        self._left = _WORK_FLOOR
        self._granted: set[int] = set()  # ids of the objects and arrays whose elements have added to the allowance
        self._indexes: dict[int, _ArrayIndex] = {}  # by id of the stored array (alive for the whole test)
        self._canonical: dict[int, str | None] = {}  # the canonical JSON of the wanted objects and arrays, by id

    def _grant(self, value: dict[str, Any] | list[Any]) -> None:
        if id(value) not in self._granted:
            self._granted.add(id(value))
            self._left += _WORK_PER_ELEMENT * len(value)

    def _spend(self, work: int) -> None:
        self._left -= work
        if self._left < 0:
            raise FilterTooCostlyError(
                "comparing this filter with a stored value would take too long (arrays of objects or of arrays "
                "that no scalar field tells apart); narrow it: fewer objects or arrays in an array, or a scalar "
                "field in each that tells them apart"
            )

    def contains(self, found: Any, wanted: Any) -> bool:
        self._spend(1)
        if isinstance(wanted, dict):
            if not isinstance(found, dict):
                return False
            self._grant(wanted)
            return all(k in found and self.contains(found[k], v) for k, v in wanted.items())
        if isinstance(wanted, list):
            if not isinstance(found, list):
                return False
            self._grant(wanted)
            index = self._index(found)
            return all(self._in_array(index, w) for w in wanted)
        if isinstance(wanted, int | float) and not isinstance(wanted, bool):
            return isinstance(found, int | float) and not isinstance(found, bool) and found == wanted
        return type(found) is type(wanted) and found == wanted  # str, bool, None

    def _in_array(self, index: _ArrayIndex, wanted: Any) -> bool:
        """Whether an element of the indexed array contains ``wanted``: a scalar looked up; an object or array
        compared only with the elements that have its rarest key, key and value, or scalar, unless one equals it."""
        if (key := _scalar_key(wanted)) is not None:
            return key in index.scalars
        if id(wanted) not in self._canonical:
            self._canonical[id(wanted)] = _canonical_json(wanted)
        if self._canonical[id(wanted)] in index.canonical:
            return True
        candidates: Sequence[Any]
        if isinstance(wanted, dict):
            terms = [t for k, v in wanted.items() for t in _wanted_terms(k, v)]
            candidates = min((index.objects_by_term.get(t, []) for t in terms), key=len, default=index.objects)
        else:
            keys = [k for w in wanted if (k := _scalar_key(w)) is not None]
            candidates = min((index.arrays_by_scalar.get(k, []) for k in keys), key=len, default=index.arrays)
        self._spend(len(wanted))
        return any(self.contains(found, wanted) for found in candidates)

    def _index(self, found: list[Any]) -> _ArrayIndex:
        if (index := self._indexes.get(id(found))) is not None:
            return index
        self._grant(found)
        index = _ArrayIndex(set(), set(), [], {}, [], {})
        for element in found:
            if (key := _scalar_key(element)) is not None:
                index.scalars.add(key)
                continue
            self._grant(element)
            self._spend(1 + len(element))
            if (canonical := _canonical_json(element)) is not None:
                index.canonical.add(canonical)
            if isinstance(element, dict):
                index.objects.append(element)
                for k, v in element.items():
                    if isinstance(v, dict | list):
                        self._grant(v)
                        self._spend(len(v))
                    for term in _stored_terms(k, v):
                        index.objects_by_term.setdefault(term, []).append(element)
            else:
                index.arrays.append(element)
                for key in {k for e in element if (k := _scalar_key(e)) is not None}:
                    index.arrays_by_scalar.setdefault(key, []).append(element)
        self._indexes[id(found)] = index
        return index


def _canonical_json(value: dict[str, Any] | list[Any]) -> str | None:
    """An object or array as JSON text equal to another's only for equal values (keys sorted): each contains the
    other. Not always for values equal as numbers (1 and 1.0), which are compared then; None for a value that is
    not JSON (a stored one the comparison then reads)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


# The terms an object in an array is looked up by, for an entry ``key: value``: (key,); (key, scalar) for a scalar
# value; (key, "[]", scalar) for each scalar in an array value; (key, "{}", name, scalar) for each scalar entry
# of an object value. A wanted object is in no stored object that lacks one of its own terms.


def _stored_terms(key: str, value: Any) -> set[tuple[Any, ...]]:
    """The terms a stored object's entry is looked up by (all of them)."""
    if (scalar := _scalar_key(value)) is not None:
        return {(key,), (key, scalar)}
    if isinstance(value, list):
        return {(key,), *((key, "[]", s) for e in value if (s := _scalar_key(e)) is not None)}
    return {(key,), *((key, "{}", n, s) for n, e in value.items() if (s := _scalar_key(e)) is not None)}


def _wanted_terms(key: str, value: Any) -> list[tuple[Any, ...]]:
    """The terms a wanted object's entry is looked up by: the most telling ones."""
    if (scalar := _scalar_key(value)) is not None:
        return [(key, scalar)]
    if isinstance(value, list):
        terms: list[tuple[Any, ...]] = [(key, "[]", s) for e in value if (s := _scalar_key(e)) is not None]
    else:
        terms = [(key, "{}", n, s) for n, e in value.items() if (s := _scalar_key(e)) is not None]
    return terms or [(key,)]


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
