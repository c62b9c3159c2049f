"""Who is calling, what they may do, and which objects they own.

Authentication is pluggable, as in LangGraph Platform's custom auth: an :class:`Authenticator` turns a
request into a :class:`Principal` (or refuses it, 401), says who owns what the caller creates
(:meth:`Authenticator.on_create`) and which stored objects the caller may read and act on
(:meth:`Authenticator.read_filter`, applied in the database). The default, :class:`ApiKeyAuth`, reads
API keys with scopes sent in the ``x-api-key`` header (as ``langgraph-sdk`` sends them); plug a JWT or
OIDC check in with ``Settings(authenticator=...)`` or ``journeys serve --auth module:factory``.

No key (or an unknown one) is a 401; a key without the scope an endpoint needs is a 403. With auth
switched off (``--no-auth``) every caller is the local developer with every scope (an admin: it sees
every object).

The server keeps only the keys' digests: a presented key is hashed and looked up, so no secret is ever
compared. Authentication comes before anything else a route checks: every route is a
:class:`server.input_guard.GuardedRoute`, which authorizes the caller before it reads the body, so a
caller without access never has a body read, parsed or reported on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fastapi import Request
from fastapi.security import APIKeyHeader

from checkpoints.ownership import DEFAULT_TENANT, Owner, Viewer
from server.plugins import import_callable
from server.problems import ApiError, AuthenticatorError
from server.settings import SCOPES, Settings, key_digest

API_KEY_HEADER = APIKeyHeader(name="x-api-key", auto_error=False, description="an API key with scopes")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: their name, scopes, groups and tenant, and the group what they create is shared with."""

    name: str
    scopes: frozenset[str]
    groups: tuple[str, ...] = ()
    authenticated: bool = True
    tenant: str = DEFAULT_TENANT
    share_with: str | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


LOCAL_DEVELOPER = Principal("local", frozenset(SCOPES), (), authenticated=False)


@runtime_checkable
class Authenticator(Protocol):
    """The custom-auth hook: who is calling, who owns what they create, and what they may read."""

    async def authenticate(self, request: Request) -> Principal:
        """The caller of ``request``; raise ``ApiError(401, …)`` to refuse it."""
        ...

    def on_create(self, principal: Principal) -> Owner:
        """The owner recorded on every object ``principal`` creates (thread, run, journey, …)."""
        ...

    def read_filter(self, principal: Principal) -> Viewer:
        """Which stored objects ``principal`` may see and act on (filtered in the database)."""
        ...


class OwnerRules:
    """The default ownership rules, to inherit in a custom authenticator: a caller owns what it creates
    (shared with its ``share_with`` group), sees its own objects and those shared with its groups, in its
    tenant; admins see everything."""

    def on_create(self, principal: Principal) -> Owner:
        return Owner(principal.name, principal.tenant, principal.share_with)

    def read_filter(self, principal: Principal) -> Viewer:
        return Viewer(principal.name, principal.tenant, principal.groups, admin=principal.admin)


class ApiKeyAuth(OwnerRules):
    """The default authenticator: API keys from the settings (their digests), with auth off meaning the
    local developer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def authenticate(self, request: Request) -> Principal:
        return authenticate(self.settings, request.headers.get("x-api-key"))


def authenticate(settings: Settings, key: str | None) -> Principal:
    """The caller holding API ``key``, by its digest (401 without a known key)."""
    if not settings.auth:
        return LOCAL_DEVELOPER
    if not key:
        raise ApiError(401, "Unauthenticated", "send an API key in the x-api-key header")
    found = settings.api_keys.get(key_digest(key))
    if found is None:
        raise ApiError(401, "Unauthenticated", "unknown API key")
    return Principal(found.principal, found.scopes, found.groups, tenant=found.tenant, share_with=found.share_with)


def load_authenticator(spec: str, settings: Settings) -> Authenticator:
    """``module:factory``: a factory taking the settings and returning an :class:`Authenticator`. The module
    is looked for as ``--plugin``'s is: installed packages, then the current directory."""
    wanted = "a function taking the settings and returning an Authenticator"
    factory = import_callable(spec, option="--auth", default="", wanted=wanted, error=AuthenticatorError)
    found = factory(settings)
    if not isinstance(found, Authenticator):
        raise AuthenticatorError(
            f"--auth {spec!r} did not return an Authenticator (authenticate, on_create, read_filter)"
        )
    return found


def resolve_authenticator(settings: Settings) -> Authenticator:
    """The settings' authenticator: API keys by default, an object given in code, or ``module:factory``."""
    chosen = settings.authenticator
    if chosen is None:
        return ApiKeyAuth(settings)
    if isinstance(chosen, str):
        return load_authenticator(chosen, settings)
    if not isinstance(chosen, Authenticator):
        raise AuthenticatorError(f"{chosen!r} is not an Authenticator (authenticate, on_create, read_filter)")
    return chosen


def authenticator(request: Request) -> Authenticator:
    found: Authenticator = request.app.state.authenticator
    return found


async def authorize(request: Request, scope: str) -> Principal:
    """The caller of ``request``, who must hold ``scope`` (authenticated once per request)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        principal = await authenticator(request).authenticate(request)
        request.state.principal = principal
    if not principal.allows(scope):
        raise ApiError(403, "Forbidden", f"this caller lacks the {scope!r} scope", scope=scope)
    return principal


class Require(APIKeyHeader):
    """A dependency: the caller, who must hold ``scope`` (its route checked that before reading the body).

    It is the API key scheme itself (as :data:`API_KEY_HEADER`, whose OpenAPI entry it gives its routes) rather
    than a dependency on it: FastAPI solves each dependency of each request anew, and the key's own was a
    quarter of a run request's dependency solving, for a value nobody read."""

    def __init__(self, scope: str) -> None:
        model = API_KEY_HEADER.model
        super().__init__(
            name=model.name, scheme_name=API_KEY_HEADER.scheme_name, description=model.description, auto_error=False
        )
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]  # the caller, not the key
        return await authorize(request, self.scope)


def require(scope: str) -> Require:
    return Require(scope)
