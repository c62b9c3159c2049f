"""``/metrics``: Prometheus metrics of the server, its workers and the database's live figures.

The figures count every tenant's journeys (open instances, open user tasks, node and intent labels): an
operator's view, not a tenant's. So it answers to a caller with the ``metrics`` scope (or ``admin``) only,
not to a tenant's ``read`` (Prometheus sends the key with ``http_headers``), or to anyone with ``--no-auth``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api import errors
from server.auth import Principal, require
from server.input_guard import GuardedRoute
from server.routing import api_router
from server.services import ServerServices, services

router = api_router(tags=["observability"], responses=errors(), route_class=GuardedRoute)
Operator = Annotated[Principal, Depends(require("metrics"))]
Services = Annotated[ServerServices, Depends(services)]


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(_caller: Operator, served: Services) -> Response:
    return Response(await served.metrics(), media_type=CONTENT_TYPE_LATEST)
