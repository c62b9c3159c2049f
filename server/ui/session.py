"""Who is using the dashboard: a browser cannot send the ``x-api-key`` header, so the login form takes the
API key (or a custom authenticator's token) once and keeps it in an HttpOnly, SameSite=Strict cookie;
every page then authenticates it with the API's own authenticator and authorizes it with the same scopes as
the JSON API. With auth off (``--no-auth``) and API keys there is no login: the local developer."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from server.auth import Principal, authenticator
from server.problems import ApiError, LoginRequired

COOKIE = "journeys_ui_key"
COOKIE_PATH = "/ui"
_CREDENTIAL_HEADERS = (b"x-api-key", b"authorization")


async def authenticated(request: Request, credential: str | None) -> Principal:
    """Who holds ``credential`` (what the login form took), by the API's authenticator (one mechanism for
    both, API keys or a custom one): the request is shown to it as an API client would send it, the
    credential in ``x-api-key`` and as an ``Authorization: Bearer`` token. Without a credential the request
    is authenticated as it came (an authenticator reading a proxy's headers needs no login). An ApiError
    (401) refuses it."""
    headers = list(request.scope["headers"])
    if credential:
        try:
            sent = credential.encode("latin-1")
        except UnicodeEncodeError:  # no HTTP client could send it in a header either
            raise ApiError(401, "Unauthenticated", "unknown API key or token") from None
        headers = [(name, value) for name, value in headers if name not in _CREDENTIAL_HEADERS]
        headers += [(b"x-api-key", sent), (b"authorization", b"Bearer " + sent)]
    return await authenticator(request).authenticate(Request({**request.scope, "headers": headers}))


async def caller(request: Request) -> Principal:
    """The dashboard's user: from the cookie's credential (LoginRequired when the authenticator refuses it)."""
    try:
        return await authenticated(request, request.cookies.get(COOKIE))
    except ApiError as refused:
        if refused.status != 401:
            raise
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
