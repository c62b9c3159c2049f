"""The dashboard at ``/ui``: server-rendered pages (Jinja2, autoescaped) over the same services as the
JSON API, with a small local script and stylesheet (no front-end build, nothing fetched from elsewhere).

Pages: the journey list (filters and counts), one journey, the inbox, the lifecycle board, the processes.
Actions are forms posting to the same orchestrator calls as the API, behind the same scopes: cancel, retry
a failed step, fork a journey from an earlier step (on its timeline), complete a user task. A refused
action shows its reason on an error page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from checkpoints.errors import JourneyError
from checkpoints.index import InstanceFilter
from graphs.errors import InvalidInputError
from graphs.kernel.patterns import registered_patterns
from graphs.lifecycle.machine import JourneyStage
from server.auth import Principal
from server.input_guard import check_json, read_body, refuse_declared_oversize, refuse_nul_in_url
from server.problems import STATUS_BY_CATEGORY, ApiError, LoginRequired
from server.routing import JourneysApp, api_router
from server.services import ServerServices, services
from server.settings import InputLimits
from server.ui import data
from server.ui.session import COOKIE, COOKIE_PATH, allow, authenticated, caller, refuse_cross_site, safe_next
from server.views.status import INDEX_STATUSES

HERE = Path(__file__).parent
TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"], default=True),  # every value a user gave is escaped
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters["pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True, default=str)
TEMPLATES.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else value
# The filters' choices, from the patterns registered and the status views' own types.
PATTERNS = tuple(name for name, pattern in registered_patterns().items() if pattern.status is not None)
STAGES = tuple(stage.value for stage in JourneyStage)
_MAX_FORM_FIELDS = 50


class UiRoute(APIRoute):
    """A dashboard route: the URL and body checked as the API's are; a refusal is an HTML page (or the
    login form), not problem JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                refuse_declared_oversize(request, request.app.state.settings.limits)
                refuse_nul_in_url(request)
                if request.method == "POST":
                    refuse_cross_site(request)
                return await handler(request)
            except LoginRequired as needed:
                return RedirectResponse(f"{COOKIE_PATH}/login?next={quote(needed.next_path)}", status_code=303)
            except ApiError as refused:
                return _error_page(request, refused.status, refused)
            except JourneyError as refused:
                return _error_page(request, STATUS_BY_CATEGORY.get(refused.category, 500), refused)

        return guarded


router = api_router(prefix=COOKIE_PATH, route_class=UiRoute, include_in_schema=False)
Caller = Annotated[Principal, Depends(caller)]
Services = Annotated[ServerServices, Depends(services)]


def install_ui(app: JourneysApp) -> None:
    """The dashboard's routes and its local static files (script, stylesheet)."""
    app.serve_routes(router)
    app.mount(f"{COOKIE_PATH}/static", StaticFiles(directory=HERE / "static"), name="ui-static")


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    page = TEMPLATES.get_template(template).render(
        auth=settings.auth, principal=context.pop("principal", None), path=request.url.path, **context
    )
    return HTMLResponse(page, status_code=status_code)


def _error_page(request: Request, status: int, error: JourneyError) -> HTMLResponse:
    return _render(request, "error.html", status_code=status, status=status, message=str(error))


async def _form(request: Request) -> dict[str, str]:
    """A posted form (application/x-www-form-urlencoded), read within the input limits."""
    limits: InputLimits = request.app.state.settings.limits
    body = await read_body(request, limits)
    try:
        text = body.decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "MalformedRequest", f"the form is not valid ({exc})") from None
    form = {}
    for name, values in parsed.items():
        value = values[-1]
        if "\x00" in name or "\x00" in value:
            raise InvalidInputError(f"form field {name[:40]!r} contains a NUL character (U+0000)")
        if len(value) > limits.max_string_chars:
            raise InvalidInputError(f"form field {name[:40]!r} is over {limits.max_string_chars} characters")
        form[name] = value
    return form


def _moment(value: str, name: str, *, end_of_day: bool = False) -> datetime | None:
    """A filter's time: a date and time, or a date (its start; with ``end_of_day``, the next day's start,
    so that "until" a date includes it). Times without a zone are UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"{name} must be a date or date and time (ISO 8601), not {value[:40]!r}") from None
    try:
        if end_of_day and len(value) == len("2026-01-31"):
            moment += timedelta(days=1)
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:  # the day after 9999-12-31, or a time whose offset takes it out of the calendar
        raise InvalidInputError(f"{name} must fall within the years 1 to 9999, not {value[:40]!r}") from None


def _choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise InvalidInputError(f"{name} must be one of {', '.join(allowed)}", allowed=list(allowed))
    return value


# --- login ----------------------------------------------------------------------------------------


@router.get("", response_class=HTMLResponse)
async def home() -> RedirectResponse:
    return RedirectResponse(f"{COOKIE_PATH}/journeys", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _render(request, "login.html", next=safe_next(next), failed=False)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await _form(request)
    target = safe_next(form.get("next"))
    credential = form.get("api_key", "").strip()
    try:
        await authenticated(request, credential)  # as every page will: by the API's authenticator
    except ApiError as refused:
        if refused.status != 401:
            raise
        return _render(request, "login.html", status_code=401, next=target, failed=str(refused))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        credential,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout() -> Response:
    response = RedirectResponse(f"{COOKIE_PATH}/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


# --- journeys -------------------------------------------------------------------------------------


@router.get("/journeys", response_class=HTMLResponse)
async def journeys(
    request: Request,
    principal: Caller,
    svc: Services,
    pattern: str = "",
    status: str = "",
    stage: str = "",
    user: str = "",
    since: str = "",
    until: str = "",
    incidents: str = "",
) -> HTMLResponse:
    allow(principal, "read")
    where = InstanceFilter(
        pattern=_choice(pattern, PATTERNS, "pattern"),
        status=_choice(status, INDEX_STATUSES, "status"),
        user_id=user[:200] or None,
        stage=_choice(stage, STAGES, "stage"),
        created_after=_moment(since, "since"),
        created_before=_moment(until, "until", end_of_day=True),
        viewer=svc.viewer(principal),  # only the caller's own journeys, as on the API
        incidents=bool(incidents),
    )
    listing = await data.journey_list(svc, where)
    filters = {"pattern": pattern, "status": status, "stage": stage, "user": user, "since": since, "until": until}
    filters["incidents"] = "1" if incidents else ""
    return _render(
        request,
        "journeys.html",
        principal=principal,
        listing=listing,
        filters=filters,
        patterns=PATTERNS,
        statuses=INDEX_STATUSES,
        stages=STAGES,
        limit=data.LIST_LIMIT,
    )


@router.get("/journeys/{instance_id:path}", response_class=HTMLResponse)
async def journey(request: Request, instance_id: str, principal: Caller, svc: Services) -> HTMLResponse:
    allow(principal, "read")
    page = await data.journey_page(svc, principal, instance_id)
    return _render(request, "journey.html", principal=principal, page=page, instance_id=instance_id)


@router.post("/journeys/{instance_id:path}/cancel", response_class=HTMLResponse)
async def cancel(request: Request, instance_id: str, principal: Caller, svc: Services) -> Response:
    allow(principal, "journeys")
    reason = (await _form(request)).get("reason", "").strip() or f"cancelled from the dashboard by {principal.name}"
    pattern = (await svc.instance(principal, instance_id)).pattern  # someone else's is not found
    with svc.acting(principal):  # as the API's cancels: what they start (compensations) is the caller's
        if pattern == "process":
            await svc.runtime.processes.cancel(instance_id, reason)
        elif pattern == "lifecycle":
            await svc.runtime.lifecycle.cancel(instance_id, reason)
        elif pattern == "saga":  # its completed steps are compensated
            await svc.runtime.saga.cancel_saga(instance_id, reason)
        elif pattern in ("session", "mvp"):
            sessions = svc.runtime.mvp.sessions if pattern == "mvp" else svc.runtime.session
            await sessions.close_session(instance_id, reason)
        else:
            raise ApiError(409, "NotCancellable", f"a {pattern} journey cannot be cancelled; it runs to its end")
    return RedirectResponse(f"{COOKIE_PATH}/journeys/{quote(instance_id)}", status_code=303)


@router.post("/journeys/{instance_id:path}/terminate", response_class=HTMLResponse)
async def terminate(request: Request, instance_id: str, principal: Caller, svc: Services) -> Response:
    allow(principal, "journeys")
    form = await _form(request)
    reason = form.get("reason", "").strip() or f"terminated from the dashboard by {principal.name}"
    await svc.instance(principal, instance_id, to_act=True)  # someone else's is not found
    with svc.acting(principal):
        await svc.runtime.terminate(instance_id, reason)
    return RedirectResponse(f"{COOKIE_PATH}/journeys/{quote(instance_id)}", status_code=303)


@router.post("/journeys/{instance_id:path}/retry", response_class=HTMLResponse)
async def retry(request: Request, instance_id: str, principal: Caller, svc: Services) -> Response:
    allow(principal, "journeys")
    await _form(request)
    await svc.instance(principal, instance_id)  # someone else's is not found
    with svc.acting(principal):  # as the API's retry: its events say who retried
        await svc.runtime.retry(instance_id, by=principal.name)
    return RedirectResponse(f"{COOKIE_PATH}/journeys/{quote(instance_id)}", status_code=303)


@router.post("/journeys/{instance_id:path}/fork", response_class=HTMLResponse)
async def fork(request: Request, instance_id: str, principal: Caller, svc: Services) -> Response:
    allow(principal, "journeys")
    step_id = (await _form(request)).get("step_id", "").strip()
    await svc.instance(principal, instance_id)  # someone else's is not found
    with svc.acting(principal):  # the fork is the caller's own
        made = await svc.runtime.fork(instance_id, step_id)
    return RedirectResponse(f"{COOKIE_PATH}/journeys/{quote(made['instance_id'])}", status_code=303)


# --- inbox ----------------------------------------------------------------------------------------


@router.get("/inbox", response_class=HTMLResponse)
async def inbox(request: Request, principal: Caller, svc: Services) -> HTMLResponse:
    allow(principal, "read")
    user = principal.name if principal.authenticated else None
    tasks = await data.open_tasks(svc, user, list(principal.groups), svc.tasks_tenant(principal))
    return _render(request, "inbox.html", principal=principal, tasks=tasks)


@router.post("/tasks/{task_id:path}/complete", response_class=HTMLResponse)
async def complete_task(request: Request, task_id: str, principal: Caller, svc: Services) -> Response:
    allow(principal, "tasks")
    await svc.task(principal, task_id)  # one of another tenant's is not found
    form = await _form(request)
    # Checked as the API checks a JSON body: json.loads alone let an integer of 5,000 digits through as a 500.
    payload = check_json((form.get("payload") or "{}").encode(), request.app.state.settings.limits)
    if not isinstance(payload, dict):
        raise InvalidInputError("the payload must be a JSON object")
    if principal.authenticated:
        user, groups = principal.name, list(principal.groups)
    else:  # without keys, the form says who acts (as the API's body does)
        user = form.get("user", "").strip() or principal.name
        groups = [g.strip() for g in form.get("groups", "").split(",") if g.strip()]
    done = await svc.runtime.processes.inbox.complete(task_id, user=user, payload=payload, groups=groups)
    return RedirectResponse(f"{COOKIE_PATH}/journeys/{quote(done['instance_id'])}", status_code=303)


# --- lifecycle and processes ----------------------------------------------------------------------


@router.get("/lifecycle", response_class=HTMLResponse)
async def lifecycle(request: Request, principal: Caller, svc: Services) -> HTMLResponse:
    allow(principal, "read")
    board = await data.lifecycle_board(svc, svc.viewer(principal))
    return _render(request, "lifecycle.html", principal=principal, board=board, stages=(*STAGES, "pending"))


@router.get("/processes", response_class=HTMLResponse)
async def processes(request: Request, principal: Caller, svc: Services) -> HTMLResponse:
    allow(principal, "read")
    overview = await data.process_overview(svc, svc.viewer(principal))
    return _render(request, "processes.html", principal=principal, processes=overview)
