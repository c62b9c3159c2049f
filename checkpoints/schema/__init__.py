"""Our schema: the frozen DDL of every migration, and the runner that applies them."""
