"""Notification rules (`/etc/cortex/alerts.yaml`): which alerts go to which actions.

The file keeps the original daemon's shape::

    alerts:
      - name: disk-critical
        check: disk_space        # the alert's source (a check id), optional
        status: fail             # warn | fail, optional
        severity: error          # a minimum severity, optional
        labels: {mountpoint: /}  # exact label values, optional
        send_resolved: true
        repeat_interval: 4h      # re-send a still-firing alert this often; 0: never
        actions:
          - type: webhook
            url: http://127.0.0.1:9000/hook

A rule matches an alert when every condition it gives holds. `status: warn`
means a WARNING (or INFO) alert and `status: fail` an ERROR or CRITICAL one,
the way the monitor grades a check. Each action has a name (`name:`, or
`<rule>.<type>` and a number when a rule has two of one type) which is the
queue name of `dead-letter list --queue` and the argument of `notify test`.
The file is validated whole: every problem is reported, naming the rule and
the field.

Besides the built-in types, an action may use a type registered at run time
in an `ActionTypes` (a notifier plugin's); an unknown type is an error naming
the known ones, except while the registering side has not loaded yet (see
`cortexd.notify.actions`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

from cortexd.alerts.model import Alert, Severity
from cortexd.notify.actions import ActionTypes
from cortexd.notify.model import (
    ACTION_TYPES,
    DEFAULT_PAGERDUTY_URL,
    DEFAULT_REPEAT_INTERVAL,
    Action,
)
from cortexd.protocol import ConfigError

__all__ = [
    "ACTION_TYPES",
    "DEFAULT_PAGERDUTY_URL",
    "Action",
    "Rule",
    "Rules",
    "load_rules",
    "parse_rules",
]

STATUSES = ("warn", "fail")
MAX_RULES_BYTES = 1 << 20
MAX_REPEAT = 365 * 86400.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

# The keys each action type takes (besides `type` and `name`) and which of
# them must be given.
_ACTION_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "webhook": (
        frozenset({"url", "hmac_secret", "hmac_header", "headers", "include_explanation"}),
        frozenset({"url"}),
    ),
    "slack": (frozenset({"url", "channel", "username"}), frozenset({"url"})),
    "discord": (frozenset({"url", "username"}), frozenset({"url"})),
    "email": (
        frozenset(
            {
                "to",
                "from",
                "smtp_host",
                "smtp_port",
                "starttls",
                "ssl",
                "username",
                "password",
                "include_explanation",
            }
        ),
        frozenset({"to"}),
    ),
    "pagerduty": (frozenset({"routing_key", "url", "severity"}), frozenset({"routing_key"})),
    "alertmanager": (frozenset({"url"}), frozenset({"url"})),
}
_URL_KEYS = frozenset({"url"})
# Every action may name a CA bundle to trust for its TLS (an internal relay or hook).
_COMMON_KEYS = frozenset({"ca_file"})


@dataclass(frozen=True, slots=True)
class Rule:
    """Conditions on an alert and the actions that receive it."""

    name: str
    actions: tuple[Action, ...]
    check: str | None = None
    status: str | None = None
    severity: Severity | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    send_resolved: bool = True
    repeat_interval: float = DEFAULT_REPEAT_INTERVAL

    def matches(self, alert: Alert) -> bool:
        """Whether every condition of this rule holds for `alert`."""
        if self.check is not None and alert.source != self.check:
            return False
        if self.status == "fail" and alert.severity < Severity.ERROR:
            return False
        if self.status == "warn" and alert.severity > Severity.WARNING:
            return False
        if self.severity is not None and alert.severity < self.severity:
            return False
        every = alert.match_labels()
        return all(every.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class Rules:
    """The loaded rules file; `actions` by name across all rules."""

    rules: tuple[Rule, ...] = ()
    source: str = ""

    @property
    def actions(self) -> dict[str, Action]:
        return {a.name: a for r in self.rules for a in r.actions}

    def actions_for(self, alert: Alert) -> list[Action]:
        """Every action of every rule matching `alert` (one per name)."""
        chosen: dict[str, Action] = {}
        for rule in self.rules:
            if rule.matches(alert):
                for action in rule.actions:
                    chosen.setdefault(action.name, action)
        return list(chosen.values())


def load_rules(path: str, types: ActionTypes | None = None) -> Rules:
    """Read and validate the rules file; a missing file means no rules.

    Raises:
        ConfigError: the file cannot be read or parsed, or a rule is invalid
            (every problem listed, each naming its rule and field).
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RULES_BYTES + 1)
    except FileNotFoundError:
        return Rules(source="")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    if len(raw) > MAX_RULES_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_RULES_BYTES} bytes"])
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_rules(data, path, types)


def parse_rules(data: Any, source: str = "<rules>", types: ActionTypes | None = None) -> Rules:
    """Validate already-parsed rules data. Raises ConfigError listing every problem."""
    if data is None:
        return Rules(source=source)
    errors: list[str] = []
    if not isinstance(data, dict) or set(data) - {"alerts"}:
        raise ConfigError([f"{source}: expected a mapping with one key, 'alerts'"])
    items = data.get("alerts") or []
    if not isinstance(items, list):
        raise ConfigError([f"{source}: 'alerts' must be a list of rules"])
    rules: list[Rule] = []
    names: set[str] = set()
    action_names: set[str] = set()
    for index, item in enumerate(items):
        rule = _rule(item, index, source, errors, names, action_names, types)
        if rule is not None:
            rules.append(rule)
    if errors:
        raise ConfigError(errors)
    return Rules(tuple(rules), source)


def _rule(
    item: Any,
    index: int,
    source: str,
    errors: list[str],
    names: set[str],
    action_names: set[str],
    types: ActionTypes | None,
) -> Rule | None:
    where = f"{source}: alerts[{index}]"
    if not isinstance(item, dict):
        errors.append(f"{where}: a rule must be a mapping")
        return None
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(f"{where}: field 'name': required (a non-empty string)")
        name = f"#{index}"
    else:
        where = f"{source}: rule {name!r}"
        if name in names:
            errors.append(f"{where}: field 'name': used by another rule")
        names.add(name)
    known = {
        "name",
        "check",
        "status",
        "severity",
        "labels",
        "actions",
        "send_resolved",
        "repeat_interval",
    }
    errors.extend(f"{where}: field {k!r}: unknown field" for k in item if k not in known)
    check = item.get("check")
    if check is not None and not isinstance(check, str):
        errors.append(f"{where}: field 'check': must be a string")
    status = item.get("status")
    if status is not None and status not in STATUSES:
        errors.append(f"{where}: field 'status': must be one of {', '.join(STATUSES)}")
    severity: Severity | None = None
    if item.get("severity") is not None:
        try:
            severity = Severity.parse(str(item["severity"]))
        except ValueError as exc:
            errors.append(f"{where}: field 'severity': {exc}")
    labels = item.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        errors.append(f"{where}: field 'labels': must map label names to strings")
        labels = {}
    send_resolved = item.get("send_resolved", True)
    if not isinstance(send_resolved, bool):
        errors.append(f"{where}: field 'send_resolved': must be true or false")
        send_resolved = True
    repeat = _duration(item.get("repeat_interval", DEFAULT_REPEAT_INTERVAL))
    if repeat is None:
        errors.append(
            f"{where}: field 'repeat_interval': must be a duration such as 30m, 4h or 1d "
            f"(0 never repeats; at most {MAX_REPEAT:g} seconds)"
        )
        repeat = DEFAULT_REPEAT_INTERVAL
    raw_actions = item.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        errors.append(f"{where}: field 'actions': required (a non-empty list)")
        raw_actions = []
    actions: list[Action] = []
    seen_types: dict[str, int] = {}
    for position, raw in enumerate(raw_actions):
        action = _action(raw, position, name, where, send_resolved, errors, seen_types, types)
        if action is None:
            continue
        action = dataclasses.replace(action, repeat_interval=repeat)
        if action.name in action_names:
            errors.append(
                f"{where}: field 'actions[{position}].name': action name {action.name!r} "
                "is used twice"
            )
        action_names.add(action.name)
        actions.append(action)
    return Rule(
        name=name,
        actions=tuple(actions),
        check=check if isinstance(check, str) else None,
        status=status if status in STATUSES else None,
        severity=severity,
        labels=dict(labels),
        send_resolved=send_resolved,
        repeat_interval=repeat,
    )


def _action(
    raw: Any,
    position: int,
    rule: str,
    where: str,
    send_resolved: bool,
    errors: list[str],
    seen_types: dict[str, int],
    types: ActionTypes | None,
) -> Action | None:
    field_prefix = f"actions[{position}]"
    if not isinstance(raw, dict):
        errors.append(f"{where}: field '{field_prefix}': an action must be a mapping")
        return None
    kind = raw.get("type")
    options = {k: v for k, v in raw.items() if k not in ("type", "name", "send_resolved")}
    if kind in ACTION_TYPES:
        allowed, required = _ACTION_KEYS[kind]
        allowed = allowed | _COMMON_KEYS
        errors.extend(
            f"{where}: field '{field_prefix}.{key}': unknown field for a {kind} action"
            for key in options
            if key not in allowed
        )
        errors.extend(
            f"{where}: field '{field_prefix}.{key}': required for a {kind} action"
            for key in sorted(required)
            if options.get(key) in (None, "", [])
        )
        _check_values(kind, options, f"{where}: field '{field_prefix}", errors)
    elif not _added_type(kind, options, f"{where}: field '{field_prefix}", errors, types):
        return None
    kind = str(kind)
    seen_types[kind] = seen_types.get(kind, 0) + 1
    default_name = f"{rule}.{kind}" + (f"{seen_types[kind]}" if seen_types[kind] > 1 else "")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name:
        errors.append(f"{where}: field '{field_prefix}.name': must be a non-empty string")
        name = default_name
    own_resolved = raw.get("send_resolved", send_resolved)
    if not isinstance(own_resolved, bool):
        errors.append(f"{where}: field '{field_prefix}.send_resolved': must be true or false")
        own_resolved = send_resolved
    if kind == "email" and isinstance(options.get("to"), str):
        options["to"] = [options["to"]]
    return Action(name, kind, options, rule, own_resolved)


def _duration(value: Any) -> float | None:
    """Seconds from `90`, `90s`, `15m`, `4h` or `1d`; None when it is none of those."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    else:
        return None
    return seconds if 0 <= seconds <= MAX_REPEAT else None


def _added_type(
    kind: Any, options: dict[str, Any], prefix: str, errors: list[str], types: ActionTypes | None
) -> bool:
    """Validate an action of a registered (plugin) type; False when the type is unknown."""
    added = types.get(kind) if types is not None and isinstance(kind, str) else None
    if added is None:
        if types is not None and not types.settled and isinstance(kind, str) and kind:
            # Its plugin has not loaded yet; the rules are checked again once it has.
            return True
        known = [*ACTION_TYPES, *(types.names() if types is not None else [])]
        errors.append(
            f"{prefix}.type': must be one of {', '.join(known)} ({kind!r} is not a known type)"
        )
        return False
    try:
        problems = added.validate(options)
    except Exception as exc:  # isolation boundary: a validator's bug is the rule's error
        problems = [("", f"the {kind} action type could not check it: {exc}")]
    for key, problem in problems:
        field_name = f".{key}" if key else ""
        errors.append(f"{prefix}{field_name}': {problem}")
    return True


def _check_values(kind: str, options: dict[str, Any], prefix: str, errors: list[str]) -> None:
    for key in _URL_KEYS & options.keys():
        url = options[key]
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append(f"{prefix}.{key}': must be an http:// or https:// URL")
    if kind == "email":
        to = options.get("to")
        targets = [to] if isinstance(to, str) else to
        if targets is not None and (
            not isinstance(targets, list)
            or not all(isinstance(t, str) and _EMAIL.match(t) for t in targets)
        ):
            errors.append(f"{prefix}.to': must be an address or a list of addresses")
        port = options.get("smtp_port")
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            errors.append(f"{prefix}.smtp_port': must be a port number (1-65535)")
        errors.extend(
            f"{prefix}.{flag}': must be true or false"
            for flag in ("starttls", "ssl")
            if flag in options and not isinstance(options[flag], bool)
        )
        if options.get("starttls") and options.get("ssl"):
            errors.append(f"{prefix}.ssl': give starttls or ssl, not both")
    if kind == "pagerduty" and options.get("severity") not in (
        None,
        "critical",
        "error",
        "warning",
        "info",
    ):
        errors.append(f"{prefix}.severity': must be critical, error, warning or info")
    if kind == "webhook":
        headers = options.get("headers")
        if headers is not None and (
            not isinstance(headers, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            errors.append(f"{prefix}.headers': must map header names to strings")
    ca_file = options.get("ca_file")
    if isinstance(ca_file, str) and not os.path.isfile(ca_file):
        errors.append(f"{prefix}.ca_file': no such file {ca_file!r}")
    if not isinstance(options.get("include_explanation", False), bool):
        errors.append(f"{prefix}.include_explanation': must be true or false")
    for key, value in options.items():
        if key in ("to", "headers", "smtp_port", "starttls", "ssl", "include_explanation"):
            continue
        if not isinstance(value, str):
            errors.append(f"{prefix}.{key}': must be a string")
