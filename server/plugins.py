"""``--plugin module:function``: a hook that registers a process's own agents on its registry."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from agents.registry import AgentRegistry
from server.problems import PluginNotFoundError


def load_plugin(path: str | None) -> Callable[[AgentRegistry], None] | None:
    """``module:function`` (``function`` defaults to ``register``) that registers agents on the registry.

    The module is looked for in the installed packages, then in the current directory, as ``python -m`` and
    uvicorn find an app there (``journeys`` is a console script: its directory is not on the path)."""
    if not path:
        return None
    module_name, _, name = path.partition(":")
    name = name or "register"
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # last: a file here never shadows an installed package
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise  # the plugin imports something missing: its own traceback says what
        raise PluginNotFoundError(
            f"--plugin {path!r}: no module named {exc.name!r} in the installed packages or in {os.getcwd()}; "
            "run from the directory holding it, install it, or add its directory to PYTHONPATH"
        ) from None
    hook = getattr(module, name, None)
    if not callable(hook):
        raise PluginNotFoundError(
            f"--plugin {path!r}: module {module_name!r} ({module.__file__}) has no function {name!r}; "
            "name the function that registers the agents as module:function"
        )
    return hook  # type: ignore[no-any-return]


def plugin_registry(path: str | None) -> AgentRegistry:
    """A registry holding what the plugin at ``path`` registers (empty without one)."""
    registry = AgentRegistry()
    if (hook := load_plugin(path)) is not None:
        hook(registry)
    return registry
