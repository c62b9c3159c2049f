"""Designs: specs by pattern, saved once, loaded and compiled on demand (also in a fresh process)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel, ValidationError

from agents.registry import AgentRegistry
from checkpoints.index import Design, DuplicateDesignError
from graphs.engine import JourneyEngine
from graphs.errors import JourneyNotFoundError, SpecError, WrongPatternError
from graphs.lifecycle import LifecycleSpec, build_lifecycle_graph, validate_lifecycle
from graphs.process import ProcessSpec
from graphs.process_builder import build_process_graph
from graphs.process_validation import validate_process
from graphs.saga import SagaSpec, build_saga_graph, validate_saga
from graphs.session import SessionSpec, build_session_graph, validate_session
from graphs.structured import StructuredSpec, build_structured_graph, validate_structured
from nodes.services import NodeServices

PatternName = Literal["structured", "saga", "session", "mvp", "lifecycle"]
Builder = Callable[[Any, NodeServices], StateGraph[Any]]
SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class PatternKind:
    spec_type: type[BaseModel]
    validate: Callable[[Any, AgentRegistry], list[str]]
    build: Builder


PATTERNS: dict[str, PatternKind] = {
    "structured": PatternKind(StructuredSpec, validate_structured, build_structured_graph),
    "saga": PatternKind(SagaSpec, validate_saga, build_saga_graph),
    "session": PatternKind(SessionSpec, lambda spec, _registry: validate_session(spec), build_session_graph),
    "mvp": PatternKind(SessionSpec, lambda spec, _registry: validate_session(spec), build_session_graph),
}
PATTERNS["lifecycle"] = PatternKind(LifecycleSpec, validate_lifecycle, build_lifecycle_graph)
PATTERNS["process"] = PatternKind(ProcessSpec, validate_process, build_process_graph)


def parse_spec(spec_type: type[SpecT], data: Mapping[str, Any] | SpecT, *, spec_name: str) -> SpecT:
    """Validate raw input into a spec, turning pydantic's report into a :class:`SpecError`."""
    if isinstance(data, spec_type):
        return data
    if not isinstance(data, Mapping):
        raise SpecError([f"expected a mapping, got {type(data).__name__}"], spec_name=spec_name)
    try:
        return spec_type.model_validate(dict(data))
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()]
        raise SpecError(problems, spec_name=spec_name) from None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def spec_digest(spec: BaseModel) -> str:
    """The digest of a spec's content: identical specs share it (and their design id and compiled graph)."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:24]


class DesignBook:
    def __init__(self, engine: JourneyEngine, registry: AgentRegistry, *, cache_size: int = 512) -> None:
        self.engine = engine
        self.registry = registry
        # Designs are insert-only (saved once under a new id, never updated), so a parsed design is kept in
        # a small LRU: starting or advancing a journey then costs no design read and no re-validation.
        self._loaded: OrderedDict[str, tuple[Design, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._builders: dict[str, Builder] = {}
        # The digest of each spec held in _loaded, by object: held, so its id is not reused meanwhile.
        self._digests: dict[int, str] = {}

    def use_builder(self, pattern: str, build: Builder) -> None:
        """Build ``pattern``'s graphs with ``build`` (a pattern whose nodes need more than NodeServices):
        every caller, the orchestrator, the server and recovery alike, then gets the one graph."""
        self._builders[pattern] = build

    def check(self, pattern: PatternName, spec: BaseModel) -> None:
        problems = PATTERNS[pattern].validate(spec, self.registry)
        if problems:
            raise SpecError(problems, spec_name=pattern)

    async def save(self, pattern: PatternName, spec: BaseModel, *, prefix: str = "journey") -> Design:
        """Check ``spec`` (every design error at once, with fixes) and store it under a new id."""
        self.check(pattern, spec)
        journey_type = str(getattr(spec, "journey_type", pattern))
        design = await self.engine.store.index.save_design(
            new_id(prefix), pattern, journey_type, spec.model_dump(mode="json")
        )
        # A design is usually started right after it is saved: keep it, as load() would parse it back.
        self._remember(design, PATTERNS[pattern].spec_type.model_validate(design.spec))
        return design

    async def save_shared(self, pattern: PatternName, spec: SpecT, *, prefix: str) -> tuple[Design, SpecT]:
        """Check and store ``spec`` under an id made of its content, once: every call (in any process)
        that saves the same spec gets the same design. A design known already is not checked again."""
        digest = spec_digest(spec)
        design_id = f"{prefix}_{digest}"
        cached = self._loaded.get(design_id)
        if cached is not None:
            self._loaded.move_to_end(design_id)
            return cached[0], cached[1]
        self.check(pattern, spec)
        index = self.engine.store.index
        design = await index.get_design(design_id)
        if design is None:
            with contextlib.suppress(DuplicateDesignError):  # saved meanwhile by another process: same content
                design = await index.save_design(
                    design_id, pattern, str(getattr(spec, "journey_type", pattern)), spec.model_dump(mode="json")
                )
            design = design or await index.get_design(design_id)
        assert design is not None
        self._remember(design, spec, digest)
        return design, spec

    async def load(self, journey_id: str, patterns: tuple[PatternName, ...]) -> tuple[Design, Any]:
        spec: Any = None
        cached = self._loaded.get(journey_id)
        if cached is not None:
            self._loaded.move_to_end(journey_id)
            design, spec = cached
        else:
            found = await self.engine.store.index.get_design(journey_id)
            if found is None:
                raise JourneyNotFoundError(f"no journey design with id {journey_id!r}", journey_id=journey_id)
            design = found
        if design.pattern not in patterns:
            raise WrongPatternError(
                f"journey {journey_id!r} is a {design.pattern} journey, not {' or '.join(patterns)}; "
                f"use the {design.pattern} orchestrator",
                journey_id=journey_id,
                pattern=design.pattern,
            )
        if spec is None:
            spec = PATTERNS[design.pattern].spec_type.model_validate(design.spec)
            self._remember(design, spec)
        return design, spec

    def _remember(self, design: Design, spec: Any, digest: str | None = None) -> None:
        replaced = self._loaded.pop(design.journey_id, None)
        if replaced is not None:
            self._digests.pop(id(replaced[1]), None)
        self._loaded[design.journey_id] = (design, spec)
        self._digests[id(spec)] = digest or spec_digest(spec)
        if len(self._loaded) > self._cache_size:
            _design, evicted = self._loaded.popitem(last=False)[1]
            self._digests.pop(id(evicted), None)

    def graph(self, pattern: str, spec: BaseModel) -> CompiledStateGraph[Any, Any, Any, Any]:
        # Keyed by content, so identical designs (every MVP session) share one compiled graph.
        build = self._builders.get(pattern, PATTERNS[pattern].build)
        digest = self._digests.get(id(spec)) or spec_digest(spec)
        return self.engine.compiled(f"{pattern}-{digest}", lambda: build(spec, self.engine.services))
