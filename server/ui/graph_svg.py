"""A LangGraph graph drawn as SVG, offline: the nodes in layers from ``__start__`` down, the current ones
highlighted. Mermaid needs a browser script or a web service to draw; this needs neither, so the dashboard
and the notebooks show the same picture with no network."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from html import escape

from langchain_core.runnables.graph import Graph as DrawableGraph

from graphs.errors import JourneyNotFoundError
from graphs.kernel.patterns import Graph
from graphs.process.spec import ProcessSpec
from graphs.runtime import JourneyRuntime
from server.assistants import get_assistant, graph_of

_CHAR_WIDTH = 7.2  # px per character of the 12px monospace labels
_BOX_HEIGHT = 30
_ROW_GAP = 46
_COLUMN_GAP = 24
_MARGIN = 16


@dataclass(frozen=True, slots=True)
class _Box:
    x: float
    y: float
    width: float

    @property
    def centre(self) -> float:
        return self.x + self.width / 2


def _layers(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Each node's layer: the longest path to it from the roots, once the edges closing loops are left out."""
    targets: dict[str, list[str]] = {n: [] for n in nodes}
    for source, target in edges:
        targets[source].append(target)
    # A depth-first walk kept on a stack of its own (a process's chain of a thousand elements overflowed
    # Python's recursion, a 500 for its page): the edges back to a node on the path close loops and are left
    # out; the finishing order, reversed, orders the rest so that one pass finds each longest path.
    forward: dict[str, list[str]] = {n: [] for n in nodes}
    state: dict[str, int] = {}  # 1: on the DFS path, 2: done
    finished: list[str] = []
    roots = [n for n in nodes if n == "__start__"] + [n for n in nodes if n != "__start__"]
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        path = [(root, iter(targets[root]))]
        while path:
            node, pending = path[-1]
            following = next(pending, None)
            if following is None:
                state[node] = 2
                finished.append(node)
                path.pop()
            elif state.get(following) != 1:  # not a loop back: drawn and layered
                forward[node].append(following)
                if following not in state:
                    state[following] = 1
                    path.append((following, iter(targets[following])))
    layer = dict.fromkeys(nodes, 0)
    for node in reversed(finished):
        for target in forward[node]:
            layer[target] = max(layer[target], layer[node] + 1)
    # Nodes a graph reaches only by Command(goto=…) have no drawn edge from __start__: they go below the
    # reachable ones rather than beside __start__, and __end__ stays last.
    reached = {"__start__"} if "__start__" in targets else set()
    frontier = list(reached)
    while frontier:
        for target in targets[frontier.pop()]:
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    if reached:
        offset = max(layer[n] for n in reached if n != "__end__") + 1
        for node in nodes:
            if node not in reached:
                layer[node] += offset
    if "__end__" in layer:
        layer["__end__"] = max([layer[n] + 1 for n in nodes if n != "__end__"], default=0)
    return layer


def graph_svg(graph: DrawableGraph, current: Collection[str] = (), *, title: str = "journey graph") -> str:
    """The graph as an SVG document; the nodes named in ``current`` are drawn highlighted (class ``current``)."""
    nodes = list(graph.nodes)
    labels = {node_id: graph.nodes[node_id].name for node_id in nodes}
    edges = [(e.source, e.target, bool(e.conditional)) for e in graph.edges]
    layer = _layers(nodes, [(s, t) for s, t, _ in edges])
    rows: dict[int, list[str]] = {}
    for node in nodes:
        rows.setdefault(layer[node], []).append(node)
    widths = {n: max(60.0, len(labels[n]) * _CHAR_WIDTH + 20) for n in nodes}
    row_widths = {r: sum(widths[n] for n in row) + _COLUMN_GAP * (len(row) - 1) for r, row in rows.items()}
    total_width = max(row_widths.values(), default=100.0) + 2 * _MARGIN + 60  # room for loop arcs on the right
    boxes: dict[str, _Box] = {}
    for r, row in rows.items():
        x = (total_width - 60 - row_widths[r]) / 2
        for node in row:
            boxes[node] = _Box(x, _MARGIN + r * (_BOX_HEIGHT + _ROW_GAP), widths[node])
            x += widths[node] + _COLUMN_GAP
    height = _MARGIN * 2 + (max(rows, default=0) + 1) * (_BOX_HEIGHT + _ROW_GAP) - _ROW_GAP
    highlighted = set(current)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="journey-graph" width="{total_width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {total_width:.0f} {height:.0f}" role="img">',
        f"<title>{escape(title)}</title>",
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
        "orient='auto-start-reverse'><path d='M 0 0 L 10 5 L 0 10 z' fill='#555'/></marker></defs>",
        "<style>.node rect{fill:#f4f6fa;stroke:#8a94a6;stroke-width:1}.node.terminal rect{fill:#e8e8e8}"
        ".node.current rect{fill:#ffe08a;stroke:#c77700;stroke-width:2.5}"
        ".node text{font:12px monospace;fill:#1d2330}.edge{fill:none;stroke:#555;stroke-width:1.2}"
        ".edge.conditional{stroke-dasharray:5 3}</style>",
    ]
    for source, target, conditional in edges:
        a, b = boxes[source], boxes[target]
        dashed = " conditional" if conditional else ""
        if layer[target] > layer[source]:
            y1, y2 = a.y + _BOX_HEIGHT, b.y
            middle = (y1 + y2) / 2
            path = (
                f"M {a.centre:.1f} {y1:.1f} C {a.centre:.1f} {middle:.1f} "
                f"{b.centre:.1f} {middle:.1f} {b.centre:.1f} {y2:.1f}"
            )
        else:  # a loop back (or a self loop): an arc out to the right
            x1, x2 = a.x + a.width, b.x + b.width
            reach = max(x1, x2) + 30 + 6 * (layer[source] - layer[target])
            y1, y2 = a.y + _BOX_HEIGHT / 2, b.y + _BOX_HEIGHT / 2
            path = f"M {x1:.1f} {y1:.1f} C {reach:.1f} {y1:.1f} {reach:.1f} {y2:.1f} {x2:.1f} {y2:.1f}"
        parts.append(
            f'<path class="edge{dashed}" data-source="{escape(source)}" data-target="{escape(target)}" '
            f"d=\"{path}\" marker-end='url(#arrow)'/>"
        )
    for node in nodes:
        box = boxes[node]
        kind = " current" if node in highlighted else (" terminal" if node in ("__start__", "__end__") else "")
        parts.append(
            f'<g class="node{kind}" data-node="{escape(node)}"><rect x="{box.x:.1f}" y="{box.y:.1f}" '
            f'width="{box.width:.1f}" height="{_BOX_HEIGHT}" rx="6"/><text x="{box.centre:.1f}" '
            f'y="{box.y + _BOX_HEIGHT / 2 + 4:.1f}" text-anchor="middle">{escape(labels[node])}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class JourneyPicture:
    """A journey's graph as it stands: the compiled graph, where it waits, and its drawings."""

    graph: Graph
    current: list[str]
    svg: str
    mermaid: str


async def journey_picture(runtime: JourneyRuntime, instance_id: str) -> JourneyPicture:
    """Any journey's graph (through its pattern's assistant, as the server finds it) with the nodes it
    waits at highlighted; the dashboard and the notebooks draw it the same way."""
    instance = await runtime.store.index.get_instance(instance_id)
    if instance is None:
        raise JourneyNotFoundError(f"no journey instance {instance_id!r}", instance_id=instance_id)
    graph = await graph_of(runtime, get_assistant(instance.pattern), instance_id)
    snapshot = await graph.aget_state(runtime.engine.config(instance_id))
    current = list(snapshot.next)
    if instance.pattern == "process":
        # A process graph routes between its elements with Command(goto=…), so LangGraph draws no edge
        # between them: the spec's own sequence flows are the picture, its waiting elements highlighted.
        spec = await runtime.processes.spec_of(await runtime.processes.deployment_of(instance))
        drawable = process_drawing(spec)
        current = [name.partition(".")[0] for name in current]
    else:
        drawable = graph.get_graph()
    svg = graph_svg(drawable, current, title=f"{instance.pattern} {instance_id}")
    return JourneyPicture(graph, current, svg, drawable.draw_mermaid())


def process_drawing(spec: ProcessSpec) -> DrawableGraph:
    """A process's elements and sequence flows as a drawable graph (conditional flows dashed)."""
    drawing = DrawableGraph()
    nodes = {element.id: drawing.add_node(None, element.id) for element in spec.elements}
    for flow in spec.flows:
        drawing.add_edge(nodes[flow.source], nodes[flow.target], conditional=flow.when is not None)
    return drawing
