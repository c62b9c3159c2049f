"""Evaluation of finished runs against their workflow tier (SPEC G7), for every pattern that declares one.

When a run ends, its agent calls (``step.completed`` events with an intent: output and duration) are
measured: p95 step latency; cost, from the token usage a langchain-core model reports (an output's
``usage_metadata`` with ``input_tokens``/``output_tokens``, and its ``model``/``model_name``) priced by
the runtime's price table; and each quality metric, the mean of its evaluator over the step outputs.
The result is logged once per run (``evaluation.recorded``) and shown in the run's status.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from checkpoints.events import Event
from graphs.errors import EvaluatorError
from nodes.evaluation import EvaluationSpec, Price, PriceTable

EVALUATED = "evaluation.recorded"
REVIEWED = "evaluation.reviewed"
IN_REVIEW = "review"  # the status of a run held for review after a breach
# An evaluator scores one step's output from 0 (bad) to 1 (good); sync or async.
Evaluator = Callable[[str, Mapping[str, Any]], float | Awaitable[float]]


class Evaluation:
    """The runtime's evaluators (by name) and price table (by model name)."""

    def __init__(self) -> None:
        self.evaluators: dict[str, Evaluator] = {}
        self.prices: dict[str, Price] = {}

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
        for metric, name in spec.evaluators.items():
            evaluator = self.evaluators.get(name)
            if evaluator is None:
                raise EvaluatorError(f"no evaluator {name!r} is registered for {metric}", evaluator=name)
            scores = [await _score(evaluator, step, output) for step, output in outputs]
            figures[metric] = round(sum(scores) / len(scores), 6) if scores else None
        breaches = []
        for limited, limit in spec.thresholds.model_dump(exclude_none=True).items():
            value = figures.get(limited)
            upper = limited in ("p95_latency_s", "cost_per_run")
            if value is None or (value > limit if upper else value < limit):
                breaches.append({"metric": limited, "value": value, "threshold": limit})
        return {"tier": spec.tier, "figures": figures, "breaches": breaches, "passed": not breaches}

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
