"""The graph store (LangGraph's ``BaseStore``) as one caller sees it: namespaces prefixed with the owner.

As LangGraph Platform's auth handlers do for ``/store`` (``namespace = (user, *namespace)``), a caller's
items live under a prefix of its own, so the owner filter is the namespace itself and runs in the store's
query: ``("owned", tenant, "user", principal, *namespace)`` for what a caller writes, or
``("owned", tenant, "group", group, *namespace)`` when its objects are shared with a group. A caller reads
its own space, the space of the group it shares with, and the spaces of its groups; it never sees the
prefix. Admins read and write the raw namespaces (every caller's items among them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langgraph.store.base import BaseStore, InvalidNamespaceError, Item, SearchItem

from checkpoints.errors import InvalidInputError
from checkpoints.ownership import Owner, Viewer

Namespace = tuple[str, ...]
# The most UTF-8 bytes an item's stored namespace (labels joined by '.', the caller's space included) and key may
# take together: PostgreSQL's store indexes them in a B-tree, whose entries hold at most 2704 bytes, so a longer
# path (15 labels of 200 random characters, a key of 1000 emoji) failed in its write, a 500 on that backend only.
MAX_PATH_BYTES = 2000
Found = TypeVar("Found", Item, SearchItem)
ROOT = "owned"


def _label(name: str) -> str:
    """A principal, tenant or group as a namespace label: LangGraph forbids '.' in labels."""
    return name.replace("%", "%25").replace(".", "%2E") or "%"


@dataclass(frozen=True, slots=True)
class OwnedStore:
    """The store for one caller: ``owner`` decides where it writes, ``viewer`` what it reads."""

    store: BaseStore
    owner: Owner
    viewer: Viewer

    @property
    def raw(self) -> bool:
        """An admin works on the raw namespaces."""
        return self.viewer.admin

    def _space(self, kind: str, name: str) -> Namespace:
        return (ROOT, _label(self.owner.tenant), kind, _label(name))

    @property
    def write_space(self) -> Namespace:
        """Where the caller's items go (nothing for an admin)."""
        if self.raw:
            return ()
        if self.owner.shared_group is not None:
            return self._space("group", self.owner.shared_group)
        return self._space("user", self.owner.principal)

    @property
    def read_spaces(self) -> list[Namespace]:
        """Every space the caller reads, its write space first (only the raw root for an admin)."""
        if self.raw:
            return [()]
        spaces = [self._space("user", self.owner.principal), self.write_space]
        spaces += [self._space("group", group) for group in self.viewer.groups]
        return list(dict.fromkeys(spaces))

    async def put(
        self, namespace: Namespace, key: str, value: dict[str, Any], index: Any = None, ttl: int | None = None
    ) -> None:
        """Store the item; ``ttl``: minutes until it expires (refused where the store has no TTLs)."""
        # Opened with a TTL config where it keeps TTLs (checkpoints.savers); its supports_ttl is no sign: the
        # async SQLite store's is False (its batching base class comes first), though it keeps them.
        if ttl is not None and self.store.ttl_config is None:
            raise InvalidInputError(
                f"ttl: this server's {type(self.store).__name__} keeps items until they are deleted (it has no item "
                "TTLs); leave ttl out, or serve a SQLite or PostgreSQL store (sqlite:///… or postgresql://…)",
                field="ttl",
            )
        stored = (*self.write_space, *namespace)
        size = len(".".join(stored).encode("utf-8", "surrogatepass")) + len(key.encode("utf-8", "surrogatepass"))
        if size > MAX_PATH_BYTES:
            raise InvalidInputError(
                f"the item's namespace and key take {size} bytes as stored (in UTF-8, with the caller's own space "
                f"of {len('.'.join(self.write_space).encode())} bytes); at most {MAX_PATH_BYTES}: use shorter labels "
                "or key",
                limit=MAX_PATH_BYTES,
            )
        try:
            await self.store.aput(stored, key, value, index=index, ttl=ttl)
        except InvalidNamespaceError as exc:  # LangGraph's rules for a raw namespace (an admin's)
            raise InvalidInputError(str(exc)) from exc

    async def get(self, namespace: Namespace, key: str, *, refresh_ttl: bool | None = None) -> Item | None:
        """The item where the caller reads it first; ``refresh_ttl`` None: a read restarts its TTL."""
        for space in self.read_spaces:
            item = await self.store.aget((*space, *namespace), key, refresh_ttl=refresh_ttl)
            if item is not None:
                return _seen(item, space)
        return None

    async def delete(self, namespace: Namespace, key: str) -> None:
        """Delete the item where the caller reads it first (deleting one it cannot see does nothing)."""
        for space in self.read_spaces:
            if await self.store.aget((*space, *namespace), key, refresh_ttl=False) is not None:
                await self.store.adelete((*space, *namespace), key)
                return

    async def search(
        self,
        prefix: Namespace,
        *,
        query: str | None,
        filter: dict[str, Any] | None,
        limit: int,
        offset: int,
        refresh_ttl: bool | None = None,
    ) -> list[SearchItem]:
        """One page of the items under ``prefix`` in every space the caller reads: ranked by score with a
        query, else newest first (as the store orders one space). ``refresh_ttl`` as :meth:`get`'s."""
        found: list[SearchItem] = []
        for space in self.read_spaces:
            items = await self.store.asearch(
                (*space, *prefix), query=query, filter=filter, limit=offset + limit, offset=0, refresh_ttl=refresh_ttl
            )
            found += [_seen(item, space) for item in items]
        if len(self.read_spaces) > 1:
            found.sort(key=lambda i: (-(i.score or 0.0) if query else 0.0, -i.updated_at.timestamp()))
        return found[offset : offset + limit]

    async def list_namespaces(
        self,
        *,
        prefix: Namespace | None,
        suffix: Namespace | None,
        max_depth: int | None,
        limit: int,
        offset: int,
    ) -> list[Namespace]:
        """The namespaces the caller sees (without their prefix), sorted, one page."""
        found: set[Namespace] = set()
        for space in self.read_spaces:
            listed = await self.store.alist_namespaces(
                prefix=(*space, *(prefix or ())) or None,
                suffix=suffix,
                max_depth=None if max_depth is None else max_depth + len(space),
                limit=offset + limit,
                offset=0,
            )
            found.update(namespace[len(space) :] for namespace in listed if len(namespace) > len(space))
        return sorted(found)[offset : offset + limit]


def _seen(item: Found, space: Sequence[str]) -> Found:
    """The item as the caller sees it: a copy whose namespace lacks the caller's prefix (never the store's
    own object: the in-memory store answers those)."""
    if not space:
        return item
    namespace = tuple(item.namespace[len(space) :])
    if isinstance(item, SearchItem):
        return SearchItem(namespace, item.key, item.value, item.created_at, item.updated_at, item.score)
    return Item(
        namespace=namespace, key=item.key, value=item.value, created_at=item.created_at, updated_at=item.updated_at
    )
