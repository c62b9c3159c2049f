"""Response models of the journey endpoints: what each orchestrator call returns, typed field by field,
so the OpenAPI document describes every answer. The routes serialize with ``exclude_unset``: a key the
orchestrator leaves out stays out, and one it sends as null stays null."""
