"""The kernel every pattern runs on: the engine (one way to run a graph) and the instance lifecycle."""

from graphs.kernel.instances import FAILED, Instances, Recoverable, failure

__all__ = ["FAILED", "Instances", "Recoverable", "failure"]
