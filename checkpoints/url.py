"""Store URLs: ``memory://``, ``sqlite:///path`` (the embedded default) and ``postgresql://…``."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from checkpoints.errors import DatabaseUnavailableError, UnsupportedStoreURLError

StoreKind = Literal["memory", "sqlite", "postgres"]

DEFAULT_STORE_URL = "sqlite:///journeys.db"
_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*):[^@]*@")  # a URL's password, found without parsing the URL


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
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read to check it: a port that is no number, or out of range, raises)
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        safe = _PASSWORD.sub(r"\1:***@", url)  # shown() parses the URL too
        raise UnsupportedStoreURLError(
            f"{safe!r} is not a URL the store can use ({exc}); check it (--database-url, $DATABASE_URL): "
            "memory://, sqlite:///path/to/file.db or postgresql://user@host:5432/db",
            url=safe,
        ) from None
    scheme = parts.scheme.lower()
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
        return StoreURL("sqlite", url, str(Path(path).expanduser()))
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        rest = url.split("://", 1)[1]
        return StoreURL("postgres", url, with_keepalives("postgresql://" + rest))
    raise UnsupportedStoreURLError(
        f"unsupported store URL {url!r}: use memory://, sqlite:///path/to/file.db or postgresql://user@host/db",
        url=url,
    )


# Every connection to PostgreSQL (the pools, the lock and listening sessions, the engine's) notices a path that died
# without a word (a failover, a NAT's dropped mapping: no FIN, nothing to read) after about 25 s: TCP keepalives
# after 10 s of silence, 3 probes 5 s apart, and an answer never acknowledged for 25 s (tcp_user_timeout, in ms).
# Without them a statement waited for its answer for the kernel's retransmissions (about 15 minutes) or for ever.
# A URL that sets one of them keeps its own.
CLIENT_KEEPALIVES = (
    ("keepalives", "1"),
    ("keepalives_idle", "10"),
    ("keepalives_interval", "5"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "25000"),
)


def with_keepalives(target: str) -> str:
    """The libpq URL ``target`` with :data:`CLIENT_KEEPALIVES` added to its query, each one it does not set."""
    given = {name for name, _ in parse_qsl(urlsplit(target).query, keep_blank_values=True)}
    missing = urlencode([(name, value) for name, value in CLIENT_KEEPALIVES if name not in given])
    if not missing:
        return target
    return f"{target}{'&' if '?' in target else '?'}{missing}"


def distributed_target(url: str) -> str:
    """The libpq URL of the PostgreSQL database ``url`` names, for distributed execution (the API and its
    workers share it through the queue); any other store URL is refused (:class:`UnsupportedStoreURLError`)."""
    parsed = parse_store_url(url)
    if parsed.kind != "postgres":
        raise UnsupportedStoreURLError(
            "distributed execution (journeys worker, journeys serve --distributed) needs a postgresql:// "
            f"database URL shared by the API and its workers, not {shown(url)!r}",
            url=shown(url),
        )
    return parsed.target


def shown(url: str) -> str:
    """``url`` as a message may show it: its password, if it has one, left out, and so are the keepalives this
    process adds (:func:`with_keepalives`)."""
    head, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if (kept := [pair for pair in pairs if pair not in CLIENT_KEEPALIVES]) != pairs:
        url = f"{head}?{urlencode(kept)}" if kept else head
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def unavailable(url: str, error: BaseException) -> DatabaseUnavailableError:
    """The typed error for a database ``url`` names that could not be reached; ``error`` is the driver's
    (SQLAlchemy's wraps it as ``orig``), whose reason the message gives on one line."""
    reason = " ".join(line.strip() for line in str(getattr(error, "orig", None) or error).splitlines() if line.strip())
    ask = (
        "does it name a SQLite database file, in a directory this process may write?"
        if urlsplit(url).scheme.lower() == "sqlite"
        else "is the database server running there, and does it accept this user and database?"
    )
    return DatabaseUnavailableError(
        f"cannot reach the database {shown(url)} ({reason}); check the URL (--database-url, $DATABASE_URL): {ask}",
        url=shown(url),
    )


@asynccontextmanager
async def opened_target(url: StoreURL) -> AsyncIterator[StoreURL]:
    """``url`` with a database to open: for ``sqlite://``, its file's directory made if missing; for
    ``memory://``, a SQLite file in a temporary directory that is deleted on exit (its WAL and lock
    sidecars with it); any other URL as it is.

    The file system work runs off the event loop: LangGraph's dev server refuses blocking calls on it."""
    if url.kind == "sqlite":
        try:
            await asyncio.to_thread(Path(url.target).parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, or not ours to write
            raise unavailable(url.raw, exc) from exc
    if url.kind != "memory" or url.target:
        yield url
        return
    directory = await asyncio.to_thread(tempfile.mkdtemp, prefix="journeys-memory-")
    try:
        yield replace(url, target=str(Path(directory) / "memory.db"))
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)
