"""The catalog on the command line: ``journeys templates`` lists the ready process templates and
``journeys new TEMPLATE --name NAME`` writes one as a project the user edits and runs.

``new`` writes two files: ``NAME.json``, the process spec (the template's, renamed), and
``NAME_agents.py``, one agent function per intent with sample outputs, a sample answer for every user
task, and a ``run()`` that deploys the spec, starts an instance and drives it to its end offline (the
humans answered from the samples, timers fired on a virtual clock). The samples take the first
conditional way at every gateway, so a fresh project runs to an end; change them to see the others.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from pprint import pformat
from typing import Any

from graphs.errors import InvalidInputError
from graphs.process.catalog import ProcessCatalog, default_process_catalog
from graphs.process.spec import ProcessSpec, ServiceTask, StartEvent, UserTask
from graphs.process.validation import intents
from nodes.criteria import Condition
from nodes.ids import SNAKE_ID

# A project name is a package name, spelled by the id rule (lower_snake_case).
PROJECT_NAME = SNAKE_ID


@dataclass(frozen=True, slots=True)
class TemplateLine:
    """One template as ``journeys templates`` lists it."""

    name: str
    description: str


def list_templates(catalog: ProcessCatalog | None = None) -> list[TemplateLine]:
    """Every ready template with a one-line description (its docstring's words on one line)."""
    catalog = catalog or default_process_catalog()
    return [TemplateLine(name, " ".join(catalog.get(name).description.split())) for name in catalog.names()]


def new_project(template: str, directory: Path, name: str | None = None) -> list[Path]:
    """Write ``template`` as project ``name`` (default: the template's name) into ``directory``; the paths
    written. Refuses a name that is not a Python identifier in snake case, and files that already exist."""
    spec = default_process_catalog().build(template)
    project = name or template
    if not PROJECT_NAME.match(project) or keyword.iskeyword(project):
        raise InvalidInputError(
            f"project name {project!r} must be lower_snake_case (letters, digits, underscores), e.g. my_{template}",
            name=project,
        )
    spec = spec.model_copy(update={"name": project})
    spec_path = directory / f"{project}.json"
    module_path = directory / f"{project}_agents.py"
    existing = [str(p) for p in (spec_path, module_path) if p.exists()]
    if existing:
        raise InvalidInputError(f"not overwriting {', '.join(existing)}; pick another --name", existing=existing)
    directory.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec.model_dump_json(indent=2, exclude_none=True) + "\n")
    module_path.write_text(agents_module(spec, template))
    return [spec_path, module_path]


def _samples(spec: ProcessSpec) -> dict[str, Any]:
    """A value for each variable a gateway tests: the first condition's, so the first conditional way is taken,
    unless that way loops back (a revision): then the sample leaves the loop."""
    found: dict[str, Any] = {}
    for flow in spec.flows:
        if flow.when is not None and not _loops_back(spec, flow.source, flow.target):
            for condition in (*flow.when.all, *flow.when.any):
                found.setdefault(condition.field, _satisfying(condition))
    return found


def _loops_back(spec: ProcessSpec, source: str, target: str) -> bool:
    """Whether ``target`` leads back to ``source`` (a flow that repeats earlier work)."""
    seen, frontier = set(), [target]
    while frontier:
        current = frontier.pop()
        if current == source:
            return True
        if current not in seen:
            seen.add(current)
            frontier += [f.target for f in spec.outgoing(current)]
    return False


def _satisfying(condition: Condition) -> Any:
    if condition.op in ("exists", "truthy"):
        return True
    return condition.value


def _sample_answer(schema: dict[str, Any] | None, outputs: dict[str, str], samples: dict[str, Any]) -> dict[str, Any]:
    schema = schema or {}
    properties: dict[str, Any] = schema.get("properties") or {}
    fields = list(dict.fromkeys([*schema.get("required", []), *outputs.values()]))
    by_field = {field: var for var, field in outputs.items()}
    answer: dict[str, Any] = {}
    for field in fields:
        variable = by_field.get(field, field)
        prop = properties.get(field) or {}
        if variable in samples:
            answer[field] = samples[variable]
        elif "enum" in prop:
            answer[field] = prop["enum"][0]
        elif prop.get("type") == "boolean":
            answer[field] = True
        else:
            answer[field] = f"sample {field.replace('_', ' ')}"
    return answer


def _function_name(intent: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", intent.lower()).strip("_") or "agent"
    return f"agent_{name}" if name[0].isdigit() or keyword.iskeyword(name) else name


def agents_module(spec: ProcessSpec, template: str) -> str:
    """The source of the project's agents module (see the module docstring)."""
    samples = _samples(spec)
    outputs: dict[str, dict[str, Any]] = {}
    for element in spec.elements:
        if isinstance(element, ServiceTask):
            out = outputs.setdefault(element.agent, {})
            for variable, field in element.outputs.items():
                out[field] = samples.get(variable, f"sample {variable.replace('_', ' ')}")
    every = sorted({intent for intent, _needed_by in intents(spec)})
    functions = []
    for intent in every:
        result = pformat(outputs.get(intent, {}), width=100, sort_dicts=False)
        functions.append(
            f"def {_function_name(intent)}(request: AgentRequest) -> dict[str, Any]:\n"
            f'    """Intent {intent!r}: replace this sample with the real work (an API call, an LLM...)."""\n'
            f"    return {result}\n"
        )
    answers = {
        e.id: _sample_answer(e.response_schema, dict(e.outputs or {}), samples)
        for e in spec.elements
        if isinstance(e, UserTask)
    }
    registry = ",\n".join(f"    {intent!r}: {_function_name(intent)}" for intent in every)
    start = next(e for e in spec.elements if isinstance(e, StartEvent) and e.timer is None)
    return _MODULE.format(
        name=spec.name,
        template=template,
        description=spec.description,
        functions="\n\n".join(functions),
        registry=registry,
        answers=pformat(answers, width=100, sort_dicts=False),
        start=start.id,
        correlation=start.correlation,
    )


_MODULE = '''"""Agents of the {name!r} process, from the {template!r} template: {description}

Edit the functions below (each takes an AgentRequest and returns a mapping; the process maps fields of it
to variables) and run this module: it deploys {name}.json, starts one instance and drives it to its end,
offline, answering user tasks from ANSWERS and firing timers on a virtual clock.

    python {name}_agents.py            # in memory
    python {name}_agents.py sqlite:///{name}.db

To serve the process over HTTP with these agents, from this directory (register() is the plugin hook;
in distributed mode give `journeys worker` the same --plugin), then deploy the spec:

    journeys serve --no-auth --plugin {name}_agents
    curl -X POST http://127.0.0.1:8123/processes -H 'content-type: application/json' -d @{name}.json
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from agents import AgentRegistry, AgentRequest
from checkpoints import VirtualClock
from graphs import JourneyRuntime

SPEC = Path(__file__).with_name("{name}.json")
START = {start!r}  # the start event run() uses
CORRELATION = {correlation!r}  # a message start's correlation variable: run() sets it to the business key
MAX_MOVES = 200


{functions}

AGENTS = {{
{registry},
}}


def register(registry: AgentRegistry) -> None:
    """Register the agents above: the hook `journeys serve --plugin {name}_agents` calls."""
    for intent, agent in AGENTS.items():
        registry.register(intent, agent, replace=True)


# What run() answers each user task with (the humans' part).
ANSWERS: dict[str, dict[str, Any]] = {answers}


async def run(url: str = "memory://", business_key: str = "example-1") -> dict[str, Any]:
    """Deploy the spec, start one instance and drive it to its end; the instance's final status."""
    clock = VirtualClock()
    async with JourneyRuntime.open(url, clock=clock) as runtime:
        register(runtime.agents)
        spec = json.loads(SPEC.read_text())
        await runtime.processes.deploy(spec)
        variables = {{CORRELATION: business_key}} if CORRELATION else {{}}
        view = await runtime.processes.start(spec["name"], business_key, variables, start_event=START)
        instance_id = view["instance_id"]
        for _ in range(MAX_MOVES):
            if view["status"] in ("completed", "compensated", "failed", "cancelled"):
                break
            tasks = await runtime.processes.inbox.list_tasks(instance_id=instance_id)
            if tasks:
                task = tasks[0]
                print(f"  user task {{task['element']}}: answering {{ANSWERS[task['element']]}}")
                view = await runtime.processes.inbox.complete(
                    task["task_id"],
                    user=task["assignee"] or "you",
                    groups=task["candidate_groups"],
                    payload=ANSWERS[task["element"]],
                )
            else:  # waiting on a timer (or a message): let a day pass
                clock.advance(timedelta(days=1))
                await runtime.processes.scheduler.run_due()
                view = await runtime.processes.status(instance_id)
        print(f"{{spec['name']}} {{business_key}}: {{view['status']}} ({{view.get('outcome')}})")
        return view


if __name__ == "__main__":
    asyncio.run(run(*sys.argv[1:2]))
'''
