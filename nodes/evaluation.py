"""What a workflow tier's evaluation is made of (SPEC G7): its thresholds, the evaluators scoring a
step's output, what a breach does, and the price table that turns reported token usage into cost.

The kernel evaluates a run when it ends (:mod:`graphs.kernel.evaluation`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QualityMetric = Literal["accuracy", "completeness", "consistency"]


class Thresholds(BaseModel):
    """A tier's limits: a run breaks one when its p95 step latency or its cost is above the limit, or a
    quality score (the mean of its evaluator over the run's step outputs, 0 to 1) is below it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p95_latency_s: float | None = Field(default=None, gt=0)
    cost_per_run: float | None = Field(default=None, ge=0)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    completeness: float | None = Field(default=None, ge=0, le=1)
    consistency: float | None = Field(default=None, ge=0, le=1)


class EvaluationSpec(BaseModel):
    """A spec's workflow tier: ``thresholds``, ``evaluators`` (quality metric → the name of an evaluator
    registered in ``runtime.evaluators``) and ``on_breach``: ``fail`` the run, or hold it for ``review``
    by a person (``review_run``), who passes or fails it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: str = Field(min_length=1, max_length=60)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    evaluators: dict[QualityMetric, str] = Field(default_factory=dict)
    on_breach: Literal["fail", "review"] = "fail"


class Price(BaseModel):
    """What a model costs per thousand input and output tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)


PriceTable = Mapping[str, Price]
