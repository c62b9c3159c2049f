"""The chat model the ``guide`` phrases its answers with: ``module:factory``, a zero-argument factory
returning a langchain-core ``BaseChatModel`` (``--guide-model``, ``$JOURNEYS_GUIDE_MODEL``; LangGraph's
own tooling reads the variable too). Resolved and called once at startup, so a bad value stops the
server before it serves, not at the first guide run.
"""

from __future__ import annotations

import importlib

from langchain_core.language_models import BaseChatModel

from agents.errors import GuideModelError
from agents.guide import ModelFactory


def load_guide_model(path: str) -> ModelFactory:
    """The factory named by ``path`` (``package.module:factory``), checked by calling it once; the model
    it returned is the one the guide uses."""
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise GuideModelError(f"guide model {path!r}: expected module:factory, e.g. my_models:chat_model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GuideModelError(f"guide model {path!r}: cannot import {module_name!r} ({exc})") from exc
    if not hasattr(module, name):
        raise GuideModelError(f"guide model {path!r}: module {module_name!r} has no {name!r}")
    factory = getattr(module, name)
    if not callable(factory):
        raise GuideModelError(f"guide model {path!r}: {name!r} is a {type(factory).__name__}, not a factory")
    try:
        model = factory()
    except Exception as exc:  # the user's code: any failure is reported as the setting's
        raise GuideModelError(f"guide model {path!r}: the factory failed: {exc!r}") from exc
    if not isinstance(model, BaseChatModel):
        raise GuideModelError(
            f"guide model {path!r}: the factory returned a {type(model).__name__}, not a langchain-core BaseChatModel"
        )
    return lambda: model
