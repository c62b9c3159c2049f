"""Ready journey templates, looked up by ``journey_type``. Users add their own with
``runtime.templates.register``. Every agent intent a template names gets a deterministic default
agent, so templates run offline out of the box."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from graphs.errors import UnknownTemplateError
from graphs.structured.builder import Branch, Step, StructuredSpec
from nodes.criteria import Condition, Criteria

Pattern = Literal["structured", "saga"]
SpecFactory = Callable[[Mapping[str, Any]], StructuredSpec]

_RESULT = {"type": "object"}


def _migration_steps() -> tuple[Step, ...]:
    return (
        Step(step_id="upload_content", name="Upload Content", agent="upload_content", input_schema=_RESULT),
        Step(step_id="analyze_content", name="Analyze Content", agent="analyze_content", input_schema=_RESULT),
        Step(step_id="transform_data", name="Transform Data", agent="transform_data", input_schema=_RESULT),
        Step(
            step_id="validate_results",
            name="Validate Results",
            agent="validate_results",
            input_schema=_RESULT,
        ),
    )


def content_migration(requirements: Mapping[str, Any]) -> StructuredSpec:
    return StructuredSpec(
        journey_type="content_migration",
        name="Enterprise Content Migration",
        steps=_migration_steps(),
        requirements=dict(requirements),
    )


def enterprise_migration(requirements: Mapping[str, Any]) -> StructuredSpec:
    return StructuredSpec(
        journey_type="enterprise_migration",
        name="Enterprise Migration Saga",
        steps=_migration_steps(),
        requirements=dict(requirements),
    )


def client_onboarding(requirements: Mapping[str, Any]) -> StructuredSpec:
    """A branching journey: the fit assessment decides between an enterprise and a standard setup."""
    enterprise = Criteria(all=(Condition(field="segment", op="==", value="enterprise"),))
    return StructuredSpec(
        journey_type="client_onboarding",
        name="Client Onboarding",
        steps=(
            Step(step_id="kickoff", name="Kickoff Call", agent="kickoff"),
            Step(
                step_id="assess_fit",
                name="Assess Fit",
                agent="assess_fit",
                input_schema={
                    "type": "object",
                    "properties": {"segment": {"enum": ["enterprise", "standard"]}},
                    "required": ["segment"],
                },
                next_steps=(Branch(to="enterprise_setup", when=enterprise), Branch(to="standard_setup")),
            ),
            Step(
                step_id="enterprise_setup",
                name="Enterprise Setup",
                agent="enterprise_setup",
                next_steps=("go_live",),
            ),
            Step(
                step_id="standard_setup",
                name="Standard Setup",
                agent="standard_setup",
                next_steps=("go_live",),
            ),
            Step(step_id="go_live", name="Go Live", agent="go_live"),
        ),
        requirements=dict(requirements),
    )


@dataclass(frozen=True, slots=True)
class Template:
    """A ready journey design by type: how to build its spec from requirements, for which pattern."""

    journey_type: str
    pattern: Pattern  # the pattern it is meant for; any template can also run as a saga
    build: SpecFactory
    description: str = ""


# Compensation intents the catalog's sagas use by default.
DEFAULT_COMPENSATIONS = {
    "upload_content": "delete_uploaded_content",
    "analyze_content": "revert_analysis",
    "transform_data": "revert_transformation",
}


class TemplateCatalog:
    """The ready journey templates by journey type."""

    def __init__(self) -> None:
        self._templates: dict[str, Template] = {}

    def register(
        self,
        journey_type: str,
        build: SpecFactory | StructuredSpec,
        *,
        pattern: Pattern = "structured",
        description: str = "",
    ) -> Template:
        factory: SpecFactory
        if isinstance(build, StructuredSpec):
            fixed = build

            def factory(requirements: Mapping[str, Any]) -> StructuredSpec:
                return fixed.model_copy(update={"requirements": {**fixed.requirements, **requirements}})
        else:
            factory = build
        template = Template(journey_type, pattern, factory, description)
        self._templates[journey_type] = template
        return template

    def get(self, journey_type: str) -> Template:
        try:
            return self._templates[journey_type]
        except KeyError:
            raise UnknownTemplateError(
                f"no journey template for journey_type {journey_type!r}; available: {', '.join(self.types())}",
                journey_type=journey_type,
                available=self.types(),
            ) from None

    def types(self) -> list[str]:
        return sorted(self._templates)

    def intents(self) -> set[str]:
        """Every agent intent the catalog's templates name (with empty requirements)."""
        found = set(DEFAULT_COMPENSATIONS.values())
        for template in self._templates.values():
            found |= {s.agent for s in template.build({}).steps if s.agent}
        return found


def default_catalog() -> TemplateCatalog:
    catalog = TemplateCatalog()
    catalog.register("content_migration", content_migration, description="upload → analyze → transform → validate")
    catalog.register(
        "enterprise_migration", enterprise_migration, pattern="saga", description="the migration as a saga"
    )
    catalog.register(
        "client_onboarding",
        client_onboarding,
        description="kickoff → fit → enterprise|standard setup → go live",
    )
    return catalog
