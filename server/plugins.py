"""``--plugin module:function``: a hook that registers a process's own agents on its registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from agents.registry import AgentRegistry


def load_plugin(path: str | None) -> Callable[[AgentRegistry], None] | None:
    """``module:function`` (``function`` defaults to ``register``) that registers agents on the registry."""
    if not path:
        return None
    module, _, name = path.partition(":")
    hook: Callable[[AgentRegistry], None] = getattr(importlib.import_module(module), name or "register")
    return hook


def plugin_registry(path: str | None) -> AgentRegistry:
    """A registry holding what the plugin at ``path`` registers (empty without one)."""
    registry = AgentRegistry()
    if (hook := load_plugin(path)) is not None:
        hook(registry)
    return registry
