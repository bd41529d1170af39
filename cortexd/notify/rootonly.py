"""What in the notification rules file only root may change.

An action's `ca_file` names a file the daemon reads as root; an action of a
type a plugin adds may name anything in its options (a file the plugin
writes, a command), and the daemon cannot tell which. Both count as
root-only when a restore or rollback by someone other than root would put
back another version of the rules file (see `cortexd.config.restore`).
"""

from __future__ import annotations

from typing import Any

from cortexd.notify.actions import ActionTypes
from cortexd.notify.rules import ACTION_TYPES, load_rules


def root_only_options(document: Any) -> dict[str, Any]:
    """{key: value} of the root-only parts of a parsed rules document."""
    items = document.get("alerts") if isinstance(document, dict) else None
    if not isinstance(items, list):
        return {}
    found: dict[str, Any] = {}
    for index, rule in enumerate(items):
        if not isinstance(rule, dict) or not isinstance(rule.get("actions"), list):
            continue
        name = rule.get("name") if isinstance(rule.get("name"), str) else f"#{index}"
        for position, action in enumerate(rule["actions"]):
            if not isinstance(action, dict):
                continue
            where = f"alerts[{name}].actions[{position}]"
            if action.get("type") not in ACTION_TYPES:
                found[where] = action
            elif "ca_file" in action:
                found[f"{where}.ca_file"] = action["ca_file"]
    return found


def check_rules_file(path: str) -> None:
    """Validate a rules file as the daemon does at start, before a restore writes it.

    Action types plugins add are not known yet at start, so, as then, an
    unknown type passes here and is checked once the plugins have loaded.

    Raises:
        ConfigError: the file does not parse or a rule is invalid.
    """
    pending = ActionTypes()
    pending.hold()
    load_rules(path, pending)
