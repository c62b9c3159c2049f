"""The process family's tables: waits, timers, the inbox, messages, deployments, migrations."""
