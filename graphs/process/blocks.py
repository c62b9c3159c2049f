"""The block structure of a process: which elements run at the top level and which inside a branch of
a parallel fork.

Each branch of a fork becomes a subgraph of its own (one node of the parent graph), so a branch that
waits for a human or a timer never holds up its sibling branches: LangGraph finishes a whole
subgraph within one parent superstep. That asks for structured forks: every branch of a fork meets
the same parallel join, through one flow, and no flow crosses between branches or leaves one except
through that join. This module finds the blocks and says, with a fix, where a model breaks that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from graphs.process.spec import EndEvent, EventGateway, ParallelGateway, ProcessSpec

TOP = ""


@dataclass
class Level:
    """One graph level: the top level, or one branch of a fork (a subgraph)."""

    key: str
    entries: list[str]
    members: list[str] = field(default_factory=list)  # elements that are nodes of this level's graph
    exit: str | None = None  # a branch: the join it flows into
    forks: dict[str, Fork] = field(default_factory=dict)


@dataclass
class Fork:
    """A parallel fork, the join that closes it and the elements of each branch."""

    fork: str
    join: str
    branches: list[Level]

    def branch_node(self, index: int) -> str:
        return f"{self.fork}.branch{index}"


@dataclass
class Structure:
    """A process's block structure: which level each element runs at, and the problems found."""

    top: Level
    level_of: dict[str, str]  # every reached element (options and boundaries too) → its level key
    problems: list[str]


def is_fork(spec: ProcessSpec, element_id: str) -> bool:
    return isinstance(spec.element(element_id), ParallelGateway) and len(spec.outgoing(element_id)) > 1


def is_join(spec: ProcessSpec, element_id: str) -> bool:
    return isinstance(spec.element(element_id), ParallelGateway) and len(spec.incoming(element_id)) > 1


def analyse(spec: ProcessSpec) -> Structure:
    """Assumes every flow names known elements (checked before)."""
    level_of: dict[str, str] = {}
    problems: list[str] = []
    for start in spec.starts():
        level_of[start.id] = TOP
    entries = [f.target for s in spec.starts() for f in spec.outgoing(s.id)]
    top = Level(TOP, entries)
    _walk(spec, top, level_of, problems)
    return Structure(top, level_of, problems)


def _describe(level: Level) -> str:
    return "the top level" if level.key == TOP else f"the branch of fork {level.key.rsplit('/', 1)[-1]}"


def _walk(spec: ProcessSpec, level: Level, level_of: dict[str, str], problems: list[str]) -> None:
    queue = deque(level.entries)
    while queue:
        element_id = queue.popleft()
        if element_id in level_of:
            if level_of[element_id] != level.key and not (level.key != TOP and is_join(spec, element_id)):
                problems.append(
                    f"element {element_id!r} is reached from two parallel blocks; flows may not cross between the "
                    "branches of a fork, nor leave a branch except through its join"
                )
            continue
        element = spec.element(element_id)
        if is_join(spec, element_id):
            if level.key != TOP:
                if level.exit not in (None, element_id):
                    problems.append(
                        f"{_describe(level)} via {level.entries[0]!r} reaches two joins, {level.exit!r} and "
                        f"{element_id!r}; every path of a branch must meet the same join"
                    )
                level.exit = level.exit or element_id
                continue
            sources = ", ".join(repr(f.source) for f in spec.incoming(element_id))
            problems.append(
                f"parallel join {element_id!r} joins flows ({sources}) that no parallel fork split; add a parallel "
                "fork before them, or merge alternative paths with an exclusive gateway instead"
            )
        level_of[element_id] = level.key
        level.members.append(element_id)
        if isinstance(element, EndEvent) and level.key != TOP:
            problems.append(
                f"{_describe(level)} via {level.entries[0]!r} reaches end event {element_id!r} before any join; "
                "lead every branch of a fork into its parallel join"
            )
        if is_fork(spec, element_id):
            join = _fork(spec, level, element_id, level_of, problems)
            if join is not None and join not in level_of:
                level_of[join] = level.key
                level.members.append(join)
                queue.extend(f.target for f in spec.outgoing(join))
            continue
        queue.extend(_successors(spec, element_id, level, level_of))


def _successors(spec: ProcessSpec, element_id: str, level: Level, level_of: dict[str, str]) -> list[str]:
    element = spec.element(element_id)
    targets = [f.target for f in spec.outgoing(element_id)]
    if isinstance(element, EventGateway):
        # The catch events after an event gateway are its options, not nodes: the race runs in the gateway.
        options, targets = targets, []
        for option in options:
            level_of.setdefault(option, level.key)
            targets += [f.target for f in spec.outgoing(option)]
    for boundary in spec.boundaries(element_id):
        level_of.setdefault(boundary.id, level.key)
        targets += [f.target for f in spec.outgoing(boundary.id)]
    return targets


def _fork(spec: ProcessSpec, level: Level, fork_id: str, level_of: dict[str, str], problems: list[str]) -> str | None:
    branches = []
    for index, flow in enumerate(spec.outgoing(fork_id)):
        branch = Level(f"{level.key}/{fork_id}.{index}", [flow.target])
        _walk(spec, branch, level_of, problems)
        branches.append(branch)
    exits = {b.exit for b in branches}
    if None in exits:
        lost = [b.entries[0] for b in branches if b.exit is None]
        problems.append(
            f"parallel fork {fork_id!r}: the branches via {lost} never reach a parallel join; lead every branch "
            "into one join (a parallel gateway with one incoming flow per branch)"
        )
        return None
    if len(exits) > 1:
        problems.append(
            f"the branches of parallel fork {fork_id!r} meet at different joins {sorted(str(e) for e in exits)}; "
            "lead them all into one join"
        )
        return None
    join = exits.pop()
    assert join is not None
    for branch in branches:
        # The branch's own elements (its members, options and boundaries) are those at its level.
        into = [f for f in spec.incoming(join) if level_of.get(f.source) == branch.key]
        if len(into) != 1:
            problems.append(
                f"the branch of fork {fork_id!r} via {branch.entries[0]!r} enters join {join!r} through "
                f"{len(into)} flows; merge its paths with an exclusive gateway so it enters through one"
            )
    if len(spec.incoming(join)) != len(branches):
        problems.append(
            f"parallel join {join!r} has {len(spec.incoming(join))} incoming flows but fork {fork_id!r} has "
            f"{len(branches)} branches; a join takes exactly one flow per branch of its fork"
        )
    level.forks[fork_id] = Fork(fork_id, join, branches)
    return join


def is_option(spec: ProcessSpec, element_id: str) -> bool:
    """A catch event that is an option of an event gateway (it runs inside the gateway's race)."""
    return any(isinstance(spec.element(f.source), EventGateway) for f in spec.incoming(element_id))
