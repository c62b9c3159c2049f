"""The ``journeys`` command line."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import structlog
import typer
from rich.console import Console

from checkpoints.url import DEFAULT_STORE_URL

app = typer.Typer(help="Durable journey orchestration on LangGraph.", no_args_is_help=True)


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


@app.command()
def demo(
    database_url: Annotated[
        str, typer.Option("--database-url", help="store URL: sqlite:///file.db (default), memory://, postgresql://…")
    ] = DEFAULT_STORE_URL,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the runtime's logs")] = False,
) -> None:
    """Run all four journey patterns offline, including a saga that fails and compensates."""
    from server.demo import run_demo

    _quiet_logs(verbose)
    asyncio.run(run_demo(database_url, Console()))


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as installed

    typer.echo(installed("journeys"))


def main() -> None:
    app()
