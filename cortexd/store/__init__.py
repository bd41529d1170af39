"""SQLite storage: one connection on its own thread, schema migrations.

This layer knows nothing of features; each feature keeps its queries beside
its model (e.g. `cortexd.alerts.store`) and hands its migrations in here.
"""

from cortexd.store.db import Database, Migration

__all__ = ["Database", "Migration"]
