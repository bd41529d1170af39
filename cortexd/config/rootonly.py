"""Root-only keys: what root executes, loads or reads, and who may connect or administer.

A key is root-only when its schema field carries `root_only` metadata (see
`schema._root_only`). Only root changes them, by editing the file: no socket
method may, directly or by putting back an older file (restore, update
rollback). This module lists those keys and reads what one configuration
file says about them, so a restore can tell which of them it would change.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from cortexd.config.loader import _normalise
from cortexd.config.schema import Config


def is_root_or_owner(uid: int) -> bool:
    """Root, or the user a per-user daemon runs as (it executes nothing they could not)."""
    return uid in (0, os.geteuid())


def root_only_keys(cls: type[Any] = Config) -> list[str]:
    """Every root-only key of the schema, dotted (`updates.apt_command`)."""
    return _walk(cls, ())


def _walk(cls: type[Any], prefix: tuple[str, ...]) -> list[str]:
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        path = (*prefix, f.name)
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            keys.extend(_walk(factory, path))
        elif f.metadata.get("root_only"):
            keys.append(".".join(path))
    return keys


def root_only_values(document: Any) -> dict[str, Any]:
    """The root-only keys a parsed daemon.conf document sets, with their values.

    Keys the document leaves unset are absent, so setting a key to its
    default still counts as a change: it overrides a lower layer. The original daemon's
    flat aliases (`model_path`, `socket_path`) count as their sections' keys.
    """
    if not isinstance(document, dict):
        return {}
    normal, _origins = _normalise(document, "", {}, [])
    found: dict[str, Any] = {}
    for key in root_only_keys():
        node: Any = normal
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found[key] = node
    return found


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Keys whose value differs between two `root_only_values` results (set, unset or changed)."""
    return sorted(
        k for k in before.keys() | after.keys() if before.get(k, _UNSET) != after.get(k, _UNSET)
    )


_UNSET: Any = object()
