"""API keys with scopes, sent in the ``x-api-key`` header (as ``langgraph-sdk`` sends them).

No key (or an unknown one) is a 401; a key without the scope an endpoint needs is a 403. With auth
switched off (``--no-auth``) every caller is the local developer with every scope.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from server.problems import ApiError
from server.settings import ApiKey, Settings

# Scopes: read (assistants, threads, runs, journeys, tasks), runs (create/cancel runs, update thread state),
# journeys (journey operations), tasks (claim/complete user tasks), messages (send messages), admin (all).
SCOPES = ("read", "runs", "journeys", "tasks", "messages", "admin")
API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="an API key with scopes")


@dataclass(frozen=True, slots=True)
class Principal:
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
    found: ApiKey | None = None
    for candidate, entry in settings.api_keys.items():
        if hmac.compare_digest(candidate.encode(), key.encode()):
            found = entry
    if found is None:
        raise ApiError(401, "Unauthenticated", "unknown API key")
    return Principal(found.principal, found.scopes, found.groups)


def require(scope: str) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency: the caller, who must hold ``scope``."""

    async def check(request: Request, key: str | None = Security(API_KEY_HEADER)) -> Principal:
        principal = authenticate(request.app.state.settings, key)
        if not principal.allows(scope):
            raise ApiError(403, "Forbidden", f"this API key lacks the {scope!r} scope", scope=scope)
        return principal

    check.__name__ = f"require_{scope}"
    return check
