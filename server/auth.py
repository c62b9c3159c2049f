"""API keys with scopes, sent in the ``x-api-key`` header (as ``langgraph-sdk`` sends them).

No key (or an unknown one) is a 401; a key without the scope an endpoint needs is a 403. With auth
switched off (``--no-auth``) every caller is the local developer with every scope.

The server keeps only the keys' digests: a presented key is hashed and looked up, so no secret is ever
compared. Authentication comes before anything else a route checks: every route is a
:class:`server.input_guard.GuardedRoute`, which authorizes the caller before it reads the body, so a
caller without access never has a body read, parsed or reported on.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from server.problems import ApiError
from server.settings import SCOPES, Settings, key_digest

API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="an API key with scopes")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling (from the API key) and which scopes and groups they have."""

    name: str
    scopes: frozenset[str]
    groups: tuple[str, ...] = ()
    authenticated: bool = True

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


LOCAL_DEVELOPER = Principal("local", frozenset(SCOPES), (), authenticated=False)


def authenticate(settings: Settings, key: str | None) -> Principal:
    if not settings.auth:
        return LOCAL_DEVELOPER
    if not key:
        raise ApiError(401, "Unauthenticated", "send an API key in the x-api-key header")
    found = settings.api_keys.get(key_digest(key))
    if found is None:
        raise ApiError(401, "Unauthenticated", "unknown API key")
    return Principal(found.principal, found.scopes, found.groups)


def authorize(settings: Settings, key: str | None, scope: str) -> Principal:
    principal = authenticate(settings, key)
    if not principal.allows(scope):
        raise ApiError(403, "Forbidden", f"this API key lacks the {scope!r} scope", scope=scope)
    return principal


class Require:
    """A dependency: the caller, who must hold ``scope`` (its route checked that before reading the body)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    async def __call__(self, request: Request, key: str | None = Security(API_KEY_HEADER)) -> Principal:
        return authorize(request.app.state.settings, key, self.scope)


def require(scope: str) -> Require:
    return Require(scope)
