"""Who owns a stored object, and which objects a caller may see: object-level authorization in SQL.

Every object a caller creates (a journey instance, a server thread or run, and any table that adds
:func:`owner_columns`) records its **owner** (the principal that created it), its **tenant**, and
optionally one **shared group** whose members may see and act on it too. Reads filter in the database
with :func:`visible_to`: a caller sees its own objects in its tenant and those shared with one of its
groups there; an admin sees everything. Rows written before ownership existed have no owner: only
admins see them.

The owner of a new object comes from the context: the server enters :func:`acting_as` for each request
(and each run it executes), and the stores read :func:`current_owner` when they insert. Code that runs
outside any request (the scheduler, recovery, embedded use of the runtime) creates unowned objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, String, and_, false, or_, true

DEFAULT_TENANT = "default"
OWNER_WIDTH = 200  # a principal, as wide as a user id column
TENANT_WIDTH = 100


@dataclass(frozen=True, slots=True)
class Owner:
    """Who a new object belongs to: its creator, the creator's tenant, and the group it is shared with."""

    principal: str
    tenant: str = DEFAULT_TENANT
    shared_group: str | None = None

    def values(self) -> dict[str, Any]:
        """The owner columns of a new row (see :func:`owner_columns`)."""
        return {"owner": self.principal, "tenant": self.tenant, "shared_group": self.shared_group}


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who reads: a principal of a tenant with its groups; an admin sees every object."""

    principal: str
    tenant: str = DEFAULT_TENANT
    groups: tuple[str, ...] = ()
    admin: bool = False

    def may_see(self, owner: str | None, tenant: str | None, shared_group: str | None = None) -> bool:
        """The same rule as :func:`visible_to`, for a row read already (one object, by its key)."""
        if self.admin:
            return True
        if owner is None or tenant != self.tenant:
            return False
        return owner == self.principal or (shared_group is not None and shared_group in self.groups)


def owner_columns() -> list[Column[Any]]:
    """The three owner columns, for a table of objects callers create (add them to its ``Table``)."""
    return [
        Column("owner", String(OWNER_WIDTH), nullable=True),
        Column("tenant", String(TENANT_WIDTH), nullable=True),
        Column("shared_group", String(OWNER_WIDTH), nullable=True),
    ]


def visible_to(
    viewer: Viewer | None,
    owner: ColumnElement[Any],
    tenant: ColumnElement[Any],
    shared_group: ColumnElement[Any] | None = None,
) -> ColumnElement[bool]:
    """A WHERE clause: the rows ``viewer`` may see (None: no filter, for the runtime's own reads)."""
    if viewer is None or viewer.admin:
        return true()
    mine = owner == viewer.principal
    if shared_group is not None and viewer.groups:
        mine = or_(mine, shared_group.in_(list(viewer.groups)))
    return and_(tenant == viewer.tenant, mine) if viewer.principal else false()


_ACTING: ContextVar[Owner | None] = ContextVar("journeys_acting_owner", default=None)


@contextmanager
def acting_as(owner: Owner | None) -> Iterator[None]:
    """Objects created inside belong to ``owner`` (None: unowned)."""
    token = _ACTING.set(owner)
    try:
        yield
    finally:
        _ACTING.reset(token)


def usable_by(owner: Owner | None, tenant: str | None) -> bool:
    """Whether ``owner`` (None: the runtime itself) may use an object of ``tenant`` that other tenants do not see (a
    journey design): its own tenant's, or a shared one (``tenant`` None)."""
    return owner is None or tenant is None or tenant == owner.tenant


def current_owner() -> Owner | None:
    """The owner of an object created now: the caller the server is acting for, or None."""
    return _ACTING.get()


def owned_key(key: str) -> str:
    """An idempotency key as stored: a caller's own. Made while the server acts for a caller, it is a digest
    of the caller's tenant, name and the key, so another caller's same key (another tenant's, another
    user's) is another key, which neither answers with nor blocks what this caller started; made outside
    any caller (the runtime used in-process), it is the key as given."""
    owner = current_owner()
    if owner is None:
        return key
    digest = hashlib.blake2b("\0".join((owner.tenant, owner.principal, key)).encode(), digest_size=20)
    return f"owned:{digest.hexdigest()}"


def new_row_owner() -> dict[str, Any]:
    """The owner columns of a row inserted now (all None outside :func:`acting_as`)."""
    owner = current_owner()
    return owner.values() if owner else {"owner": None, "tenant": None, "shared_group": None}
