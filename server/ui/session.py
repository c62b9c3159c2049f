"""Who is using the dashboard: a browser cannot send the ``x-api-key`` header, so the login form takes the
API key once and keeps it in an HttpOnly, SameSite=Strict cookie; every page then authorizes that key with
the same scopes as the JSON API. With auth off (``--no-auth``) there is no login: the local developer."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from server.auth import LOCAL_DEVELOPER, Principal, authenticate
from server.problems import ApiError, LoginRequired

COOKIE = "journeys_ui_key"
COOKIE_PATH = "/ui"


def caller(request: Request) -> Principal:
    """The dashboard's user: from the cookie's API key (LoginRequired without a valid one)."""
    settings = request.app.state.settings
    if not settings.auth:
        return LOCAL_DEVELOPER
    key = request.cookies.get(COOKIE)
    if not key:
        raise LoginRequired(request.url.path)
    try:
        return authenticate(settings, key)
    except ApiError:
        raise LoginRequired(request.url.path) from None


def allow(principal: Principal, scope: str) -> Principal:
    if not principal.allows(scope):
        raise ApiError(403, "Forbidden", f"this API key lacks the {scope!r} scope", scope=scope)
    return principal


def refuse_cross_site(request: Request) -> None:
    """A form posted from another site is refused (the cookie is SameSite=Strict too; this covers --no-auth,
    where there is no cookie to withhold)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # not sent by a browser: no ambient credentials to abuse
    sent = urlsplit(origin)
    if (sent.scheme, sent.netloc) != (request.url.scheme, request.url.netloc):
        raise ApiError(403, "CrossSiteForm", "forms are accepted from this dashboard's own pages only")


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a path of the dashboard only (no open redirect)."""
    if path and path.startswith(f"{COOKIE_PATH}/") and not path.startswith("//") and "\\" not in path:
        return path
    return f"{COOKIE_PATH}/journeys"
