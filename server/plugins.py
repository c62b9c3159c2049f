"""``--plugin module:function``: a hook that registers a process's own agents on its registry."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, cast

from agents.registry import AgentRegistry
from checkpoints.errors import JourneyError
from server.problems import PluginNotFoundError


def import_callable(
    spec: str, *, option: str, default: str, wanted: str, error: type[JourneyError]
) -> Callable[..., Any]:
    """The function ``module:name`` names (``name`` defaults to ``default``), for a command line option
    (``--plugin``, ``--auth``); ``error``, naming the option and what to do, when there is none.

    The module is looked for in the installed packages, then in the current directory, as ``python -m`` and
    uvicorn find an app there (``journeys`` is a console script: its directory is not on the path)."""
    module_name, _, name = spec.partition(":")
    name = name or default
    if not module_name:
        raise error(f"{option} {spec!r} names no module: name {wanted} as module:function")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: a file here never shadows an installed package
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise  # the module imports something missing: its own traceback says what
        raise error(
            f"{option} {spec!r}: no module named {exc.name!r} in the installed packages or in {os.getcwd()}; "
            "run from the directory holding it, install it, or add its directory to PYTHONPATH"
        ) from None
    found = getattr(module, name, None) if name else None
    if not callable(found):
        missing = f"has no function {name!r}" if name else "is named without a function"
        raise error(
            f"{option} {spec!r}: module {module_name!r} ({module.__file__}) {missing}; name {wanted} as module:function"
        )
    return cast(Callable[..., Any], found)


def load_plugin(path: str | None) -> Callable[[AgentRegistry], None] | None:
    """``module:function`` (``function`` defaults to ``register``) that registers agents on the registry,
    found as :func:`import_callable` finds it."""
    if not path:
        return None
    wanted = "the function that registers the agents"
    return import_callable(path, option="--plugin", default="register", wanted=wanted, error=PluginNotFoundError)


def plugin_registry(path: str | None) -> AgentRegistry:
    """A registry holding what the plugin at ``path`` registers (empty without one)."""
    registry = AgentRegistry()
    if (hook := load_plugin(path)) is not None:
        hook(registry)
    return registry
