"""The log analyzer: journal reading, its socket methods and the journal watcher."""

from cortexd.logs.journal import Journal, Query, parse_level
from cortexd.logs.timespec import parse_since
from cortexd.logs.watcher import BUILTIN_PATTERNS, JournalWatcher, Pattern, classify

__all__ = [
    "BUILTIN_PATTERNS",
    "Journal",
    "JournalWatcher",
    "Pattern",
    "Query",
    "classify",
    "parse_level",
    "parse_since",
]
