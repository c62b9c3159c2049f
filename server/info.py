"""``GET /info``: what this server is and which parts of the Agent Server API it serves, as clients
(agent-chat-ui, the JS and Python SDKs) probe it before they connect."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel


class InfoFlags(BaseModel):
    """The Agent Server features clients check for."""

    assistants: bool
    crons: bool
    store: bool
    langsmith: bool


class ServerInfo(BaseModel):
    """The answer of ``GET /info``."""

    version: str  # journeys' version
    langgraph_py_version: str
    flags: InfoFlags


def _installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:  # run from a checkout without an install
        return "unknown"


@cache
def server_info() -> ServerInfo:
    return ServerInfo(
        version=_installed("journeys"),
        langgraph_py_version=_installed("langgraph"),
        flags=InfoFlags(assistants=True, crons=True, store=True, langsmith=False),
    )
