"""The runbook shipped with cortexd: one YAML file per family of checks, validated at load.

Plugins add entries for their own checks in a `runbook.yaml` beside their
`plugin.yaml` (same format; see docs/explain.md).
"""

from __future__ import annotations

from cortexd.knowledge.loader import (
    PLACEHOLDERS,
    KnowledgeError,
    Schema,
    check_fixes,
    load_builtin,
    load_file,
    parse,
)
from cortexd.knowledge.model import Cause, Condition, Entry, FixRef, KnowledgeBase

__all__ = [
    "PLACEHOLDERS",
    "Cause",
    "Condition",
    "Entry",
    "FixRef",
    "KnowledgeBase",
    "KnowledgeError",
    "Schema",
    "check_fixes",
    "load_builtin",
    "load_file",
    "parse",
]
