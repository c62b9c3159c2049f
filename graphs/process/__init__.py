"""BPMN-style processes: specs, validation, the builder, versions, timers, inbox and messages."""
