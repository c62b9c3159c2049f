"""Structured journeys (steps in an enforced order) and sagas (steps that undo themselves)."""
