"""Store URLs: ``memory://``, ``sqlite:///path`` (the embedded default) and ``postgresql://…``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from checkpoints.errors import UnsupportedStoreURLError

StoreKind = Literal["memory", "sqlite", "postgres"]

DEFAULT_STORE_URL = "sqlite:///journeys.db"


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. ``raw`` is kept for messages; ``target`` is the path or libpq URL."""

    kind: StoreKind
    raw: str
    target: str

    @property
    def sqlalchemy_url(self) -> str:
        if self.kind == "memory":
            return "sqlite+aiosqlite://"
        if self.kind == "sqlite":
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
