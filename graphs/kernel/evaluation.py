"""Evaluation of finished runs against their workflow tier (SPEC G7), for every pattern that declares one.

The kernel hook every pattern calls when a run completes is :meth:`Evaluation.judge` (structured and saga
runs, processes reaching an end event, sessions and the MVP when closed), and :meth:`Evaluation.review`
for a person's decision on a run held for review. When a run ends, its agent calls (the pattern's
completion events with an intent: output and duration) are measured: p95 step latency; cost, from the
token usage a langchain-core model reports (an output's ``usage_metadata`` with ``input_tokens``/
``output_tokens``, and its ``model``/``model_name``) priced by the runtime's price table; and each
quality metric, the mean of its evaluator over the step outputs.
The result is logged once per run (``evaluation.recorded``) and shown in the run's status.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from checkpoints.errors import InvalidInputError
from checkpoints.events import Event, EventLog, NewEvent
from checkpoints.index import Instance
from checkpoints.values import check_value
from graphs.errors import EvaluatorError, NotInReviewError
from nodes.evaluation import EvaluationSpec, Price, PriceTable
from nodes.services import failure

EVALUATED = "evaluation.recorded"
REVIEWED = "evaluation.reviewed"
log = structlog.get_logger("journeys.evaluation")
IN_REVIEW = "review"  # the status of a run held for review after a breach
# An evaluator scores one step's output from 0 (bad) to 1 (good); sync or async.
Evaluator = Callable[[str, Mapping[str, Any]], float | Awaitable[float]]


class Evaluation:
    """The runtime's evaluators (by name) and price table (by model name), and the hook that evaluates a
    completed run of any pattern and records the verdict in ``events``."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.evaluators: dict[str, Evaluator] = {}
        self.prices: dict[str, Price] = {}

    async def judge(
        self,
        instance_id: str,
        pattern: str,
        tier: EvaluationSpec,
        measured: Sequence[str],
        *,
        status: str = "completed",
    ) -> str:
        """Evaluate a run that has just completed (call under ``exclusive``) over its events of the types
        ``measured`` (its agent calls), record the result once (``evaluation.recorded``) and answer the
        instance's status: ``status`` when it passed, else ``failed`` or :data:`IN_REVIEW` as the tier says."""
        key = f"{instance_id}:evaluation"
        if (done := await self.events.find_by_key(instance_id, key)) is not None:  # judged already (a repeated call)
            passed = bool(done.payload.get("passed"))
            return status if passed else "failed" if tier.on_breach == "fail" else IN_REVIEW
        result = await self.evaluate(tier, await self.events.list(instance_id, types=list(measured)))
        recorded = NewEvent(EVALUATED, result, None, key)
        if result["passed"]:
            await self.events.append(instance_id, [recorded])
            return status
        if tier.on_breach == "fail":
            breached = [b["metric"] for b in result["breaches"]]
            details = {"error": f"the run broke its tier's thresholds: {breached}", "error_type": "ThresholdBreached"}
            verdict, also = "failed", [failure(pattern, "evaluation", details)]
        else:
            verdict, also = IN_REVIEW, []
        await self.events.append(instance_id, [recorded, *also], status=verdict)
        return verdict

    async def review(
        self, instance: Instance, *, approved: bool, by: str, note: str = "", status: str = "completed"
    ) -> str:
        """A person's decision on a run held for review (call under ``exclusive``, with the instance read
        there): ``approved`` gives it ``status``, otherwise it fails. Answers the new status."""
        if not isinstance(by, str) or not by.strip() or not isinstance(note, str):
            # The decision's audit record names who made it, as a completed user task names its user.
            raise InvalidInputError(f"a review names its reviewer: by must be a non-empty string, got {by!r:.60}")
        check_value({"by": by, "note": note}, "review")
        if instance.status != IN_REVIEW:
            raise NotInReviewError(
                f"journey run {instance.instance_id!r} is {instance.status}, not in review", allowed=[]
            )
        verdict = status if approved else "failed"
        decision = NewEvent(
            REVIEWED, {"approved": approved, "by": by, "note": note}, None, f"{instance.instance_id}:review"
        )
        also = [] if approved else [failure(instance.pattern, "review", {"error": note or f"rejected by {by}"})]
        await self.events.append(instance.instance_id, [decision, *also], status=verdict)
        return verdict

    async def verdict(self, instance_id: str) -> dict[str, Any]:
        """What a run's status shows of its evaluation: the last result and the review, if any."""
        found = await self.events.list(instance_id, types=[EVALUATED, REVIEWED])
        evaluated = [e.payload for e in found if e.type == EVALUATED]
        reviewed = [e.payload for e in found if e.type == REVIEWED]
        return {**(evaluated[-1] if evaluated else {}), "review": reviewed[-1] if reviewed else None}

    def register(self, name: str, evaluator: Evaluator) -> None:
        """Register an evaluator: ``evaluator(step_id, output) -> score in [0, 1]``."""
        self.evaluators[name] = evaluator

    def set_prices(self, prices: PriceTable | Mapping[str, Mapping[str, float]]) -> None:
        self.prices.update({m: p if isinstance(p, Price) else Price.model_validate(p) for m, p in prices.items()})

    def missing(self, spec: EvaluationSpec) -> list[str]:
        """The evaluators ``spec`` names that are not registered."""
        return sorted(name for name in spec.evaluators.values() if name not in self.evaluators)

    async def evaluate(self, spec: EvaluationSpec, steps: Sequence[Event]) -> dict[str, Any]:
        """The run's figures, the thresholds it broke and whether it passed."""
        called = [e for e in steps if e.payload.get("intent") and isinstance(e.payload.get("output"), dict)]
        outputs = [(e.step or "", dict(e.payload["output"])) for e in called]
        durations = sorted(float(e.payload["duration_ms"]) / 1000 for e in steps if "duration_ms" in e.payload)
        figures: dict[str, float | None] = {
            "p95_latency_s": _p95(durations),
            "cost_per_run": round(sum(self._cost(output) for _step, output in outputs), 6),
        }
        errors: dict[str, str] = {}
        for metric, name in spec.evaluators.items():
            try:
                evaluator = self.evaluators.get(name)
                if evaluator is None:
                    raise EvaluatorError(f"no evaluator {name!r} is registered for {metric}", evaluator=name)
                scores = [await _score(evaluator, step, output) for step, output in outputs]
            except Exception as exc:  # the user's evaluator may raise anything: the run is still judged
                # The run has completed: raised here, its verdict was never recorded and it stood completed,
                # unjudged. An unmeasured metric is a breach, with the reason, and the tier decides.
                errors[metric] = f"{type(exc).__name__}: {exc}"
                figures[metric] = None
                log.warning("evaluator failed", evaluator=name, metric=metric, error=errors[metric])
                continue
            figures[metric] = round(sum(scores) / len(scores), 6) if scores else None
        breaches = []
        for limited, limit in spec.thresholds.model_dump(exclude_none=True).items():
            value = figures.get(limited)
            upper = limited in ("p95_latency_s", "cost_per_run")
            if value is None or (value > limit if upper else value < limit):
                breach = {"metric": limited, "value": value, "threshold": limit}
                breaches.append(breach | ({"error": errors[limited]} if limited in errors else {}))
        result = {"tier": spec.tier, "figures": figures, "breaches": breaches, "passed": not breaches}
        return result | ({"errors": errors} if errors else {})

    def _cost(self, output: Mapping[str, Any]) -> float:
        usage = output.get("usage_metadata")
        if not isinstance(usage, Mapping):
            return 0.0
        model = str(output.get("model") or output.get("model_name") or "")
        price = self.prices.get(model)
        if price is None:
            return 0.0
        tokens_in, tokens_out = float(usage.get("input_tokens") or 0), float(usage.get("output_tokens") or 0)
        return tokens_in / 1000 * price.input_per_1k + tokens_out / 1000 * price.output_per_1k


def _p95(values: Sequence[float]) -> float | None:
    """The nearest-rank 95th percentile (None for no values)."""
    if not values:
        return None
    return round(values[max(0, math.ceil(0.95 * len(values)) - 1)], 6)


async def _score(evaluator: Evaluator, step: str, output: Mapping[str, Any]) -> float:
    score = evaluator(step, output)
    if inspect.isawaitable(score):
        score = await score
    value = float(score)
    if not 0 <= value <= 1:
        raise EvaluatorError(f"an evaluator scored step {step!r} {value}, outside 0..1", step=step)
    return value
