"""Designs: specs by pattern, saved once, loaded and compiled on demand (also in a fresh process)."""

from __future__ import annotations

import asyncio
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
from checkpoints.errors import DuplicateDesignError
from checkpoints.index import Design
from checkpoints.ownership import current_owner, usable_by
from graphs.errors import JourneyNotFoundError, SpecError, WrongPatternError
from graphs.kernel.engine import JourneyEngine
from graphs.kernel.instances import Instances
from nodes.services import NodeServices

PatternName = Literal["structured", "saga", "session", "mvp", "lifecycle"]
Builder = Callable[[Any, NodeServices], StateGraph[Any]]
SpecT = TypeVar("SpecT", bound=BaseModel)


def spec_digest(spec: BaseModel) -> str:
    """The SHA-256 of a spec's canonical JSON: equal specs give equal digests, in any process."""
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def parse_spec(spec_type: type[SpecT], data: Mapping[str, Any] | SpecT, *, spec_name: str) -> SpecT:
    """Validate raw input into a spec, turning pydantic's report into a :class:`SpecError`."""
    if isinstance(data, spec_type):
        return data
    if not isinstance(data, Mapping):
        raise SpecError([f"expected a mapping, got {type(data).__name__}"], spec_name=spec_name)
    try:
        return spec_type.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(validation_problems(exc), spec_name=spec_name) from None


def validation_problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as problems (``path: message``), without those that follow from another: the
    length of a list whose items failed (it counts only the valid ones), and the ``str`` side of a
    ``str | Model`` given a mapping (the model's errors say what is wrong with it)."""
    errors = exc.errors()

    def below(loc: tuple[Any, ...], depth: int) -> bool:  # another error lies deeper under loc[:depth]
        return any(len(e["loc"]) > depth and e["loc"][:depth] == loc[:depth] and e["loc"] != loc for e in errors)

    kept = [
        e
        for e in errors
        if not (e["type"] == "too_short" and below(e["loc"], len(e["loc"])))
        and not (e["type"] == "string_type" and e["loc"][-1:] == ("str",) and below(e["loc"], len(e["loc"]) - 1))
    ]
    return [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in kept or errors]


def saver_tenant() -> str | None:
    """The tenant a design saved now belongs to: that of the caller the server acts for, whose tenant alone starts
    it (as a process name is its deployer's); None, shared by every tenant, for one the runtime saves itself (used
    in-process, a plugin's)."""
    owner = current_owner()
    return None if owner is None else owner.tenant


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def new_instance_id(engine: JourneyEngine, prefix: str) -> str:
    """:func:`new_id` for a journey instance its caller is about to start under ``engine.exclusive``: on
    PostgreSQL possibly one whose lock this process took ahead, which spares the start a round trip (see
    ``InstanceLocks.fresh``)."""
    return engine.store.locks.fresh(prefix, new_id)


def _graph_key(pattern: str, spec: BaseModel) -> str:
    # Keyed by content, so identical designs (every MVP session) share one compiled graph.
    return f"{pattern}-{spec_digest(spec)[:24]}"


@dataclass(frozen=True, slots=True)
class DesignKind:
    """How a pattern's designs are parsed, checked and compiled into a LangGraph graph."""

    spec_type: type[BaseModel]
    validate: Callable[[Any, AgentRegistry | None], list[str]]  # None: agents are not checked
    build: Callable[[Any, NodeServices], StateGraph[Any]]


class DesignBook:
    """Saves, loads and validates journey designs and compiles their graphs, for every pattern."""

    def __init__(
        self,
        engine: JourneyEngine,
        registry: AgentRegistry,
        kinds: Callable[[str], DesignKind],
        *,
        logged_steps: Callable[[str], bool] = lambda _pattern: False,
        cache_size: int = 512,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self._kinds = kinds  # a pattern's design kind (the pattern registry's, given by the runtime)
        # Whether a pattern's graphs log every step (the pattern registry's ``replays_from_log``).
        self._logged_steps = logged_steps
        self.instances = Instances(engine)  # the lifecycle every orchestrator's instances go through
        # Designs are insert-only (saved once under a new id, never updated), so a parsed design is kept in
        # a small LRU: starting or advancing a journey then costs no design read and no re-validation.
        self._loaded: OrderedDict[str, tuple[Design, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._builders: dict[str, Builder] = {}
        # Every spec held in _loaded, by object (held, so its id is not reused meanwhile), with its
        # compiled-graph key once asked for (None until then): hashed once per design, not per run (a
        # lifecycle spec takes about 1.5 ms to hash).
        self._keys: dict[int, tuple[str, str] | None] = {}
        # A shared design's id today (its content's) → the id an older release stored the same design under.
        self._stored_as: dict[str, str] = {}
        # The reads of designs not held yet, one per design however many callers want it at once: a cold worker's
        # first wave of continuations (64 at a time) read, parsed and hashed the same design once each.
        self._reading: dict[str, asyncio.Future[Design]] = {}
        # The specs found sound, by pattern, content and whether agents were checked: a design's errors follow
        # from its content and agents are only ever added, so a start asked again (every run of a template, a
        # client sending its spec each time; ~0.6-1.2 ms of schema checks each) is not checked again.
        self._sound: OrderedDict[tuple[str, str, bool], None] = OrderedDict()

    def use_builder(self, pattern: str, build: Builder) -> None:
        """Build ``pattern``'s graphs with ``build`` (a pattern whose nodes need more than NodeServices):
        every caller, the orchestrator, the server and recovery alike, then gets the one graph."""
        self._builders[pattern] = build

    def check(self, pattern: PatternName, spec: BaseModel, *, agents: bool = True) -> None:
        """Refuse ``spec``'s design errors (:class:`SpecError`, every one at once); ``agents``: also an agent
        or handler this process has not registered (left out where the agents live in other processes)."""
        key = (pattern, spec_digest(spec), agents)
        if key in self._sound:
            self._sound.move_to_end(key)
            return
        problems = self._kinds(pattern).validate(spec, self.registry if agents else None)
        if problems:
            raise SpecError(problems, spec_name=pattern)
        self._sound[key] = None
        if len(self._sound) > self._cache_size:
            self._sound.popitem(last=False)

    async def save(
        self, pattern: PatternName, spec: BaseModel, *, prefix: str = "journey", agents: bool = True
    ) -> Design:
        """Check ``spec`` (every design error at once, with fixes; ``agents``: see :meth:`check`) and store it
        under a new id."""
        drafted = self.drafted(pattern, spec, prefix=prefix, agents=agents)
        design = await self.engine.store.index.save_design(
            drafted.journey_id, pattern, drafted.journey_type, drafted.spec, tenant=drafted.tenant
        )
        self.saved(design)
        return design

    def drafted(self, pattern: PatternName, spec: BaseModel, *, prefix: str = "journey", agents: bool = True) -> Design:
        """``spec`` checked (as :meth:`save` checks it) under a new id, not stored: for a caller that stores it
        with what it belongs to, in one transaction (a process version's deploy), then tells :meth:`saved`. It is
        the tenant's of the caller the server acts for (see :func:`saver_tenant`)."""
        self.check(pattern, spec, agents=agents)
        journey_type = str(getattr(spec, "journey_type", pattern))
        spec_json = spec.model_dump(mode="json")
        now = self.engine.store.clock.now()
        return Design(new_id(prefix), pattern, journey_type, spec_json, now, saver_tenant())

    def saved(self, design: Design) -> None:
        """``design`` is stored: it is kept, as load() would parse it back (a design is usually started right
        after it is saved)."""
        self._remember(design, self._kinds(design.pattern).spec_type.model_validate(design.spec))

    async def save_shared(self, pattern: PatternName, spec: SpecT, *, prefix: str) -> tuple[Design, SpecT]:
        """Check and store ``spec`` under an id made of its content and of the tenant whose caller saves it (see
        :func:`saver_tenant`), once: every call (in any process) that saves the same spec for the same tenant gets
        the same design; another tenant's is another. A design known already is not checked again."""
        digest = spec_digest(spec)[:24]
        tenant = saver_tenant()
        own = digest if tenant is None else hashlib.sha256(f"{tenant}:{digest}".encode()).hexdigest()[:24]
        design_id = self._stored_as.get(f"{prefix}_{own}", f"{prefix}_{own}")
        cached = self._loaded.get(design_id)
        if cached is not None:
            self._loaded.move_to_end(design_id)
            return cached[0], cached[1]
        self.check(pattern, spec)
        index = self.engine.store.index
        design = await index.get_design(design_id)
        if design is None and tenant is None:  # older releases stored shared designs only
            design = await self._stored_by_older_release(pattern, spec, prefix)
        if design is not None and design.journey_id != design_id:
            self._stored_as[design_id] = design.journey_id
        if design is None:
            with contextlib.suppress(DuplicateDesignError):  # saved meanwhile by another process: same content
                design = await index.save_design(
                    design_id,
                    pattern,
                    str(getattr(spec, "journey_type", pattern)),
                    spec.model_dump(mode="json"),
                    tenant=tenant,
                )
            design = design or await index.get_design(design_id)
        assert design is not None
        self._remember(design, spec)
        self._keys[id(spec)] = (pattern, f"{pattern}-{digest}")
        return design, spec

    async def _stored_by_older_release(self, pattern: PatternName, spec: BaseModel, prefix: str) -> Design | None:
        """The design of ``spec`` an older release stored under another content id: its digest covered the spec as
        that release dumped it, and every field added since with a default changes it. Its stored spec is compared
        as today's spec reads it (as its journeys run it), so an unchanged spec saved again after an upgrade is the
        same design, not a second one (a structured journey's instance id is made of its design's)."""
        digest = spec_digest(spec)
        spec_type = self._kinds(pattern).spec_type
        for stored in await self.engine.store.index.designs_of_type(
            pattern, str(getattr(spec, "journey_type", pattern))
        ):
            if not stored.journey_id.startswith(f"{prefix}_") or stored.tenant is not None:  # not a shared one
                continue
            with contextlib.suppress(ValidationError):
                if spec_digest(spec_type.model_validate(stored.spec)) == digest:
                    return stored
        return None

    async def load(
        self, journey_id: str, patterns: tuple[PatternName, ...], *, to_start: bool = False
    ) -> tuple[Design, Any]:
        """The design ``journey_id`` and its spec, of one of ``patterns``. ``to_start``: for a new run of it, which
        only its tenant's callers start (another tenant's design is :class:`JourneyNotFoundError`, as if none
        were stored); the runs started already go on whoever loads it."""
        spec: Any = None
        cached = self._loaded.get(journey_id)
        if cached is not None:
            self._loaded.move_to_end(journey_id)
            design, spec = cached
        else:
            design = await self._read(journey_id)
            cached = self._loaded.get(journey_id)
            if cached is not None:  # parsed meanwhile by a caller that shared the read
                design, spec = cached
        if to_start and not usable_by(current_owner(), design.tenant):
            raise JourneyNotFoundError(f"no journey design with id {journey_id!r}", journey_id=journey_id)
        if design.pattern not in patterns:
            raise WrongPatternError(
                f"journey {journey_id!r} is a {design.pattern} journey, not {' or '.join(patterns)}; "
                f"use the {design.pattern} orchestrator",
                journey_id=journey_id,
                pattern=design.pattern,
            )
        if spec is None:
            spec = self._kinds(design.pattern).spec_type.model_validate(design.spec)
            self._remember(design, spec)
        return design, spec

    async def _read(self, journey_id: str) -> Design:
        """The stored design ``journey_id``, read once for all the callers that ask for it meanwhile."""
        reading = self._reading.get(journey_id)
        if reading is None:
            reading = self._reading[journey_id] = asyncio.ensure_future(self._read_stored(journey_id))
            reading.add_done_callback(lambda read: self._read_done(journey_id, read))
        return await asyncio.shield(reading)  # a caller cancelled does not cancel the others' read

    async def settle(self) -> None:
        """Wait for the design reads under way (shielded: a cancelled caller leaves its read running), so that none
        outlives the store it reads: the runtime's close calls it before the store closes."""
        while self._reading:
            await asyncio.wait(list(self._reading.values()))

    def _read_done(self, journey_id: str, read: asyncio.Future[Design]) -> None:
        self._reading.pop(journey_id, None)
        if not read.cancelled():
            read.exception()  # retrieved: its callers may all have been cancelled

    async def _read_stored(self, journey_id: str) -> Design:
        found = await self.engine.store.index.get_design(journey_id)
        if found is None:
            raise JourneyNotFoundError(f"no journey design with id {journey_id!r}", journey_id=journey_id)
        return found

    async def load_graph(
        self, journey_id: str, patterns: tuple[PatternName, ...]
    ) -> tuple[Design, Any, CompiledStateGraph[Any, Any, Any, Any]]:
        """:meth:`load` with the design's compiled graph, whose key is hashed once per loaded design."""
        design, spec = await self.load(journey_id, patterns)
        return design, spec, self.graph(design.pattern, spec)

    def _remember(self, design: Design, spec: Any) -> None:
        replaced = self._loaded.pop(design.journey_id, None)
        if replaced is not None and replaced[1] is not spec:
            self._keys.pop(id(replaced[1]), None)
        self._loaded[design.journey_id] = (design, spec)
        self._keys.setdefault(id(spec), None)
        if len(self._loaded) > self._cache_size:
            _design, evicted = self._loaded.popitem(last=False)[1]
            self._keys.pop(id(evicted), None)

    def graph(self, pattern: str, spec: BaseModel) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The compiled graph of ``spec``: one per distinct design content, shared by every instance."""
        known = self._keys.get(id(spec))
        if known is not None and known[0] == pattern:
            key = known[1]
        else:
            key = _graph_key(pattern, spec)
            if id(spec) in self._keys:  # held: remember its key
                self._keys[id(spec)] = (pattern, key)
        build = self._builders.get(pattern, self._kinds(pattern).build)
        return self.engine.compiled(
            key, lambda: build(spec, self.engine.services), logged_steps=self._logged_steps(pattern)
        )
