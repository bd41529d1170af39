"""Views of a loaded config: plain dicts, redaction of secrets, reload diffs."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cortexd.config.schema import Config

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|hmac|routing_key|private)", re.I)
_WEBHOOK_KEY = re.compile(r"webhook", re.I)


def as_dict(config: Config) -> dict[str, Any]:
    """The config as plain JSON-ready data."""
    result: dict[str, Any] = dataclasses.asdict(config)
    return result


def redacted(config: Config) -> dict[str, Any]:
    """The config with secrets replaced, as `config.get` shows it."""
    result: dict[str, Any] = _redact(as_dict(config), key="")
    return result


def _redact(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and value:
        if _SECRET_KEY.search(key):
            return REDACTED
        if "://" in value:
            return _redact_url(value, whole_path=bool(_WEBHOOK_KEY.search(key)))
    return value


def _redact_url(url: str, *, whole_path: bool) -> str:
    """Hide credentials in a URL: user info, query, and a webhook's tokenised path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = f"{REDACTED}@{host}"
    path = f"/{REDACTED}" if whole_path and parts.path not in ("", "/") else parts.path
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, host, path, query, ""))


def restart_required(old: Config, new: Config) -> list[str]:
    """Dotted keys that differ between `old` and `new` and only take effect on restart."""
    changed: list[str] = []
    for f in dataclasses.fields(Config):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(before):
            changed.extend(
                f"{f.name}.{sub.name}"
                for sub in dataclasses.fields(before)
                if sub.metadata.get("restart")
                and getattr(before, sub.name) != getattr(after, sub.name)
            )
        elif f.metadata.get("restart") and before != after:
            changed.append(f.name)
    return changed
