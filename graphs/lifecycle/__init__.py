"""The gated client lifecycle: SANDBOX → PILOT → PRODUCTION, with rollback."""
