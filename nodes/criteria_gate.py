"""The criteria gate: metric thresholds with operators, optionally over a time window, evaluated
against a pluggable :class:`MetricSource` at the runtime clock's "now".

    search_precision >= 0.85, aggregate "all" over P7D   -> "precision stable above 85% for 7 days"
    bug_count == 0, aggregate "sum" over P7D             -> "no critical bugs in the last 7 days"
    user_satisfaction >= 4.0                              -> the latest value

Every evaluation yields a :class:`ValidationResult` whose checks carry name, passed, actual,
expected and message; the caller stores it with the event log (see ``validation_statement``).
The comparison itself is the shared :class:`nodes.criteria.Condition`.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Executable

from checkpoints.lifecycle import LifecycleStore, validation_row
from nodes.criteria import Condition
from nodes.ids import SNAKE_ID

Comparison = Literal[">=", ">", "<=", "<", "==", "!="]
Aggregate = Literal["latest", "min", "max", "mean", "sum", "count", "all"]
METRIC_NAME = SNAKE_ID
# Aggregates over no samples that still have a value: no bugs reported means zero bugs.
_EMPTY_IS_ZERO = ("sum", "count")


def describe_window(window: timedelta) -> str:
    days = window / timedelta(days=1)
    if days >= 1 and days == int(days):
        return f"{int(days)} day" + ("s" if days != 1 else "")
    hours = window / timedelta(hours=1)
    return f"{hours:g} hours"


class MetricCriterion(BaseModel):
    """``aggregate(metric over window) operator threshold``. Without a window, over all history."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    operator: Comparison
    threshold: float
    aggregate: Aggregate = "latest"
    window: timedelta | None = Field(default=None, description="ISO 8601 duration, e.g. P7D")
    name: str = Field(default="", description="the check's name; defaults to the metric")
    description: str = ""

    @field_validator("metric")
    @classmethod
    def _metric_shape(cls, value: str) -> str:
        if not METRIC_NAME.match(value):
            raise ValueError(f"metric {value!r} must be lower_snake_case (letters, digits, underscores)")
        return value

    @model_validator(mode="after")
    def _window_fits(self) -> MetricCriterion:
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError(f"the window of {self.label!r} must be a positive duration, got {self.window}")
        if self.aggregate == "all" and self.window is None:
            raise ValueError(f"{self.label!r}: aggregate 'all' (stable over a window) needs a window, e.g. 'P7D'")
        return self

    @property
    def label(self) -> str:
        return self.name or self.metric

    @property
    def expected(self) -> str:
        text = f"{self.operator} {self.threshold:g}"
        if self.window is None:
            return text if self.aggregate == "latest" else f"{self.aggregate} {text}"
        span = describe_window(self.window)
        if self.aggregate == "all":
            return f"{text} throughout the last {span}"
        return f"{self.aggregate} over the last {span} {text}"

    def holds_for(self, value: float) -> bool:
        return Condition(field="value", op=self.operator, value=self.threshold).holds({"value": value})


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One recorded value of a metric, and when."""

    value: float
    at: datetime


class MetricSource(Protocol):
    """Where metric values come from. The default reads what ``record_metric`` stored."""

    async def latest(self, journey_id: str, metrics: Collection[str], at: datetime) -> Mapping[str, MetricSample]:
        """The last sample of each metric recorded at or before ``at`` (metrics with none are left out)."""
        ...

    async def window(
        self, journey_id: str, metrics: Collection[str], since: datetime, until: datetime
    ) -> Mapping[str, Sequence[MetricSample]]:
        """Each metric's samples with ``since < at <= until``, oldest first."""
        ...


class TableMetricSource:
    """The default source: the ``lifecycle_metrics`` table, written through the API with timestamps."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._rows = LifecycleStore(engine)

    async def latest(self, journey_id: str, metrics: Collection[str], at: datetime) -> Mapping[str, MetricSample]:
        rows = await self._rows.latest_metrics(journey_id, metrics, at)
        return {metric: MetricSample(value, recorded_at) for metric, value, recorded_at in rows}

    async def window(
        self, journey_id: str, metrics: Collection[str], since: datetime, until: datetime
    ) -> Mapping[str, Sequence[MetricSample]]:
        series: dict[str, list[MetricSample]] = defaultdict(list)
        for metric, value, recorded_at in await self._rows.metric_window(journey_id, metrics, since, until):
            series[metric].append(MetricSample(value, recorded_at))
        return series


@dataclass(frozen=True, slots=True)
class CriteriaCheck:
    """The outcome of one criterion, with the seed's fields: whether it passed, the value read
    (``actual_value``) and the value expected (``expected_value``). ``actual`` and ``expected`` are
    the earlier names, kept as aliases."""

    name: str
    passed: bool
    actual_value: Any
    expected_value: Any
    message: str

    @property
    def actual(self) -> Any:
        return self.actual_value

    @property
    def expected(self) -> Any:
        return self.expected_value

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "actual_value": self.actual_value,
            "expected_value": self.expected_value,
            "message": self.message,
            "actual": self.actual_value,  # the earlier names, for clients that read them
            "expected": self.expected_value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CriteriaCheck:
        # Validations stored before the seed's names were adopted carry only actual/expected.
        actual = data["actual_value"] if "actual_value" in data else data.get("actual")
        expected = data["expected_value"] if "expected_value" in data else data.get("expected")
        return cls(data["name"], bool(data["passed"]), actual, expected, data["message"])


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """The outcome of one gate: passed only when every check passed."""

    validation_id: str
    journey_id: str
    kind: str  # start, promotion, completion, rollback
    event: str
    from_stage: str | None
    to_stage: str | None
    checks: tuple[CriteriaCheck, ...]
    evaluated_at: datetime
    evaluation_ms: float = 0.0
    passed: bool = field(init=False)
    summary: str = field(init=False)

    def __post_init__(self) -> None:
        failed = [c.name for c in self.checks if not c.passed]
        object.__setattr__(self, "passed", not failed)
        if not failed:
            text = f"all {len(self.checks)} checks passed" if self.checks else "no checks to pass"
        else:
            text = f"{len(failed)} of {len(self.checks)} checks failed: {', '.join(failed)}"
        object.__setattr__(self, "summary", text)

    @property
    def failed_checks(self) -> list[CriteriaCheck]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "validation_id": self.validation_id,
            "journey_id": self.journey_id,
            "kind": self.kind,
            "event": self.event,
            "from_stage": self.from_stage,
            "to_stage": self.to_stage,
            "passed": self.passed,
            "summary": self.summary,
            "checks": [c.to_dict() for c in self.checks],
            "evaluated_at": self.evaluated_at.isoformat(),
            "evaluation_ms": self.evaluation_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ValidationResult:
        at = data["evaluated_at"]
        return cls(
            validation_id=data["validation_id"],
            journey_id=data["journey_id"],
            kind=data["kind"],
            event=data["event"],
            from_stage=data.get("from_stage"),
            to_stage=data.get("to_stage"),
            checks=tuple(CriteriaCheck.from_dict(c) for c in data["checks"]),
            evaluated_at=datetime.fromisoformat(at) if isinstance(at, str) else at,
            evaluation_ms=float(data.get("evaluation_ms", 0.0)),
        )


def validation_statement(result: ValidationResult) -> Executable:
    """The row that stores a validation (written with its ``lifecycle.validated`` event)."""
    return validation_row(
        validation_id=result.validation_id,
        journey_id=result.journey_id,
        kind=result.kind,
        event=result.event,
        from_stage=result.from_stage,
        to_stage=result.to_stage,
        passed=result.passed,
        checks=[c.to_dict() for c in result.checks],
        summary=result.summary,
        evaluation_ms=result.evaluation_ms,
        evaluated_at=result.evaluated_at,
    )


async def evaluate_criteria(
    criteria: Sequence[MetricCriterion], source: MetricSource, journey_id: str, now: datetime
) -> list[CriteriaCheck]:
    """One check per criterion, reading each metric once per query shape (latest, window, window start)."""
    if not criteria:
        return []
    plain = {c.metric for c in criteria if c.window is None and c.aggregate == "latest"}
    everything = {c.metric for c in criteria if c.window is None and c.aggregate != "latest"}
    windowed = [c for c in criteria if c.window is not None]
    latest = await source.latest(journey_id, plain, now) if plain else {}
    history: Mapping[str, Sequence[MetricSample]] = {}
    if everything:
        history = await source.window(journey_id, everything, datetime.min.replace(tzinfo=now.tzinfo), now)
    recent: Mapping[str, Sequence[MetricSample]] = {}
    if windowed:
        widest = max(c.window for c in windowed if c.window is not None)
        recent = await source.window(journey_id, {c.metric for c in windowed}, now - widest, now)
    starts: dict[datetime, Mapping[str, MetricSample]] = {}
    for since, metrics in _window_starts(windowed, now).items():
        starts[since] = await source.latest(journey_id, metrics, since)

    checks = []
    for criterion in criteria:
        if criterion.window is None and criterion.aggregate == "latest":
            sample = latest.get(criterion.metric)
            checks.append(_check_values(criterion, [sample] if sample else [], None))
        elif criterion.window is None:
            checks.append(_check_values(criterion, list(history.get(criterion.metric, ())), None))
        else:
            since = now - criterion.window
            samples = [s for s in recent.get(criterion.metric, ()) if s.at > since]
            start = starts.get(since, {}).get(criterion.metric) if criterion.aggregate == "all" else None
            checks.append(_check_values(criterion, samples, start))
    return checks


def _window_starts(windowed: Sequence[MetricCriterion], now: datetime) -> dict[datetime, set[str]]:
    """For "stable over a window" checks: the moments whose in-effect value must also pass."""
    starts: dict[datetime, set[str]] = defaultdict(set)
    for c in windowed:
        if c.aggregate == "all" and c.window is not None:
            starts[now - c.window].add(c.metric)
    return starts


def _check_values(criterion: MetricCriterion, samples: list[MetricSample], start: MetricSample | None) -> CriteriaCheck:
    where = f" in the last {describe_window(criterion.window)}" if criterion.window else ""
    expected = criterion.expected
    aggregate = criterion.aggregate

    def check(passed: bool, actual: Any, message: str) -> CriteriaCheck:
        return CriteriaCheck(criterion.label, passed, actual, expected, message)

    if aggregate == "all":
        return _check_stable(criterion, samples, start, check)
    values = [s.value for s in samples]
    if not values and aggregate not in _EMPTY_IS_ZERO:
        return check(False, None, f"no value of {criterion.metric} was recorded{where}; needs {expected}")
    actual = _aggregate(aggregate, values)
    passed = criterion.holds_for(actual)
    shown = "latest" if aggregate == "latest" else aggregate
    verdict = "meets" if passed else "does not meet"
    what = f"{criterion.metric}" if shown == "latest" else f"{shown} of {criterion.metric}{where}"
    extra = f" ({len(values)} samples)" if shown != "latest" else ""
    return check(passed, actual, f"{what} is {actual:g}{extra}, which {verdict} {expected}")


def _aggregate(aggregate: str, values: list[float]) -> float:
    if aggregate == "latest":
        return values[-1]
    if aggregate == "min":
        return min(values)
    if aggregate == "max":
        return max(values)
    if aggregate == "mean":
        return statistics.fmean(values)
    if aggregate == "sum":
        return float(sum(values))
    return float(len(values))


def _check_stable(
    criterion: MetricCriterion,
    samples: list[MetricSample],
    start: MetricSample | None,
    check: Callable[[bool, Any, str], CriteriaCheck],
) -> CriteriaCheck:
    """Every value in effect during the window passes: the one at its start and every later sample."""
    span = describe_window(criterion.window) if criterion.window else ""
    if start is None:
        return check(
            False,
            None,
            f"no value of {criterion.metric} covers the start of its window (the last {span}); "
            f"being stable {criterion.expected} needs data for the whole window",
        )
    series = [start, *samples]
    failing = [s for s in series if not criterion.holds_for(s.value)]
    values = [s.value for s in series]
    worst = min(values) if criterion.operator in (">=", ">") else max(values)
    if criterion.operator in ("==", "!="):
        worst = failing[0].value if failing else values[-1]
    if failing:
        return check(
            False,
            worst,
            f"{criterion.metric} was {failing[0].value:g} at {failing[0].at.isoformat()}, "
            f"within the last {span}; needs {criterion.expected}",
        )
    return check(
        True,
        worst,
        f"{criterion.metric} stayed {criterion.operator} {criterion.threshold:g} for the last {span} "
        f"(worst {worst:g} over {len(series)} values)",
    )


class Stopwatch:
    """Milliseconds spent evaluating a gate (stored with the validation, reported by the benchmark)."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    @property
    def ms(self) -> float:
        return round((time.perf_counter() - self._started) * 1000, 3)
