"""Store URLs: ``memory://``, ``sqlite:///path`` (the embedded default) and ``postgresql://…``."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from checkpoints.errors import UnsupportedStoreURLError

StoreKind = Literal["memory", "sqlite", "postgres"]

DEFAULT_STORE_URL = "sqlite:///journeys.db"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. ``raw`` is kept for messages; ``target`` is the path or libpq URL.

    ``memory://`` is a throwaway SQLite file: its ``target`` is empty until the store opens it
    (:func:`checkpoints.savers.throwaway`), and it then runs the very code of ``sqlite://``."""

    kind: StoreKind
    raw: str
    target: str

    @property
    def sqlalchemy_url(self) -> str:
        if self.kind in ("memory", "sqlite"):
            return f"sqlite+aiosqlite:///{self.target}"
        return "postgresql+psycopg://" + self.target.split("://", 1)[1]


def parse_store_url(url: str) -> StoreURL:
    """Parse and check a store URL, failing with a message that lists the accepted forms."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return StoreURL("memory", url, "")
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        # sqlite:///relative.db and sqlite:////abs/path.db, as SQLAlchemy spells them.
        path = path[1:] if path.startswith("/") else path
        if not path or path == ":memory:":
            raise UnsupportedStoreURLError(
                f"{url!r} names no file; use memory:// for a throwaway store or sqlite:///path/to/file.db",
                url=url,
            )
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return StoreURL("sqlite", url, str(Path(path).expanduser()))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        rest = url.split("://", 1)[1]
        return StoreURL("postgres", url, "postgresql://" + rest)
    raise UnsupportedStoreURLError(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path/to/file.db or postgresql://user@host/db",
        url=url,
    )


@contextmanager
def opened_target(url: StoreURL) -> Iterator[StoreURL]:
    """``url`` with a database to open: for ``memory://``, a SQLite file in a temporary directory that is
    deleted on exit (its WAL and lock sidecars with it); any other URL as it is."""
    if url.kind != "memory" or url.target:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="journeys-memory-") as directory:
        yield replace(url, target=str(Path(directory) / "memory.db"))
