"""Routing new instances to process versions: rollout weights and A/B variants, bucketed by business key.

A business key always falls in the same bucket (a hash, not a random draw), so routing is sticky:
the same key gets the same version for as long as the weights stay put. Entries are laid out newest
version first (A/B: by variant name), so raising the new version's weight 10 → 50 → 100 only ever
moves keys *onto* it: a key on v2 at 10% is still on v2 at 50%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from graphs.errors import RolloutConflictError, RolloutError

BUCKETS = 10_000


def bucket(name: str, business_key: str) -> float:
    """A stable position in [0, 100) for this key of this process."""
    digest = hashlib.sha256(f"{name}\x00{business_key}".encode()).hexdigest()
    return (int(digest[:15], 16) % BUCKETS) * 100 / BUCKETS


def ordered(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if any(e.get("variant") for e in entries):
        return sorted((dict(e) for e in entries), key=lambda e: str(e.get("variant")))
    return sorted((dict(e) for e in entries), key=lambda e: -int(e["version"]))


def choose(name: str, business_key: str, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The rollout entry (version, weight, variant) a new instance with this key goes to."""
    position = bucket(name, business_key)
    cumulative = 0.0
    live = [e for e in ordered(entries) if float(e["weight"]) > 0]
    for entry in live:
        cumulative += float(entry["weight"])
        if position < cumulative:
            return entry
    return live[-1]  # rounding: the last bucket belongs to the last entry


def weights_rollout(weights: Mapping[int, float], deployed: Sequence[int]) -> list[dict[str, Any]]:
    entries = [{"version": int(v), "weight": float(w), "variant": None} for v, w in weights.items()]
    check(entries, deployed)
    return ordered(entries)


def variants_rollout(variants: Mapping[str, tuple[int, float]], deployed: Sequence[int]) -> list[dict[str, Any]]:
    entries = [{"version": int(v), "weight": float(w), "variant": str(label)} for label, (v, w) in variants.items()]
    check(entries, deployed)
    return ordered(entries)


def check(entries: Sequence[Mapping[str, Any]], deployed: Sequence[int]) -> None:
    problems = []
    for entry in entries:
        if int(entry["version"]) not in deployed:
            problems.append(f"version {entry['version']} is not deployed (deployed: {sorted(deployed)})")
        if float(entry["weight"]) < 0:
            problems.append(f"version {entry['version']} has a negative weight {entry['weight']}")
    total = sum(float(e["weight"]) for e in entries)
    if abs(total - 100.0) > 1e-6:
        problems.append(f"weights sum to {total:g}; they must sum to 100 (percent)")
    if not entries:
        problems.append("a rollout needs at least one version")
    if problems:
        raise RolloutError("invalid rollout: " + "; ".join(problems), problems=problems)


def describe(entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": int(e["version"]), "weight": float(e["weight"]), "variant": e.get("variant")} for e in entries]


def rollout_after_deploy(
    name: str, version: int, weight: float | None, current: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The rollout once ``version`` of ``name`` is deployed over ``current``: all new instances without ``weight``
    (or a first version), else ``weight`` percent taken from the default version (the largest share, the newest of
    equals), the others keeping theirs. :class:`RolloutConflictError` when ``current`` is an A/B test (its variants
    would be lost) or its default holds less than ``weight``."""
    if weight is None or not current:
        return [{"version": version, "weight": 100.0, "variant": None}]
    default = max(current, key=lambda e: (float(e["weight"]), int(e["version"])))
    ab_test = any(e.get("variant") for e in current)
    if ab_test or float(default["weight"]) < weight:
        why = "it runs an A/B test" if ab_test else f"its default, version {default['version']}, holds less"
        raise RolloutConflictError(
            f"version {version} of process {name!r} cannot take {weight:g} % of the current rollout ({why}): "
            f"change the rollout (PUT /processes/{name}/rollout) or deploy without a weight",
            name=name,
            version=version,
            rollout=describe(current),
        )
    entries = [{"version": version, "weight": float(weight), "variant": None}]
    for entry in current:
        share = float(entry["weight"]) - (weight if entry is default else 0.0)
        if share > 0:
            entries.append({"version": int(entry["version"]), "weight": share, "variant": None})
    return entries
