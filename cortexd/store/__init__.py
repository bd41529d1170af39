"""SQLite storage: one connection on its own thread, schema migrations.

This layer knows nothing of features; each feature keeps its queries beside
its model (e.g. `cortexd.alerts.store`) and hands its migrations in here.
"""

from cortexd.store.copy import copier
from cortexd.store.db import Database, Migration
from cortexd.store.errors import DatabaseLocked, StorageUnavailable, StoreFailed
from cortexd.store.owners import StoreOwner, Stores
from cortexd.store.quarantine import Quarantined, find_quarantined

__all__ = [
    "Database",
    "DatabaseLocked",
    "Migration",
    "Quarantined",
    "StorageUnavailable",
    "StoreFailed",
    "StoreOwner",
    "Stores",
    "copier",
    "find_quarantined",
]
