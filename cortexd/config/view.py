"""Views of a loaded config: plain dicts, redaction of secrets, reload diffs."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cortexd.config.schema import Config

REDACTED = "<redacted>"
# Keys whose values are secrets whatever they look like, matched by whole
# words of the key (`smtp_password`, `routing_key`) so `max_tokens` is not one.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "hmac",
        "credential",
        "credentials",
        "authorization",
        "cookie",
        "apikey",
        "private",
    }
)
_SECRET_PAIRS = frozenset(
    {"api_key", "routing_key", "integration_key", "signing_key", "access_key", "private_key"}
)
_KEY_WORDS = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
# Keys (or enclosing sections) whose URLs carry their secret in the path:
# Slack's /services/T…/B…/XXXX, Discord's /api/webhooks/ID/TOKEN.
_TOKEN_PATH_KEY = re.compile(r"(webhook|hook|slack|discord)", re.I)
_TOKEN_PATH_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com")


def as_dict(config: Config) -> dict[str, Any]:
    """The config as plain JSON-ready data."""
    result: dict[str, Any] = dataclasses.asdict(config)
    return result


def redacted(config: Config) -> dict[str, Any]:
    """The config with secrets replaced, as `config.get` shows it.

    Values under secret-looking keys are replaced whole; URLs lose their user
    info and query string anywhere, and their path when they are webhooks.
    """
    return redact(as_dict(config))


def redact(data: dict[str, Any]) -> dict[str, Any]:
    """Plain config data with secrets replaced (see `redacted`)."""
    result: dict[str, Any] = _redact(data, keys=())
    return result


def is_secret_key(key: str) -> bool:
    """True for keys such as `smtp_password`, `hmac_key`, `routingKey`, `auth_token`."""
    words = [w for w in _KEY_WORDS.split(_CAMEL.sub(r"\1_\2", key).lower()) if w]
    if _SECRET_WORDS.intersection(words):
        return True
    return any(f"{a}_{b}" in _SECRET_PAIRS for a, b in itertools.pairwise(words))


def _redact(value: Any, keys: tuple[str, ...]) -> Any:
    key = keys[-1] if keys else ""
    if isinstance(value, dict):
        return {k: _redact(v, (*keys, str(k))) for k, v in value.items()}
    if is_secret_key(key) and value not in (None, "") and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, list | tuple):
        return [_redact(v, keys) for v in value]
    if isinstance(value, str) and "://" in value:
        token_path = any(_TOKEN_PATH_KEY.search(k) for k in keys)
        return _redact_url(value, token_path=token_path)
    return value


def _redact_url(url: str, *, token_path: bool) -> str:
    """Hide credentials in a URL: user info, query, and a webhook's tokenised path."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.netloc.rpartition("@")[2]  # keeps an IPv6 literal's brackets and the port
    if "@" in parts.netloc:
        host = f"{REDACTED}@{host}"
    hide_path = token_path or (parts.hostname or "").lower() in _TOKEN_PATH_HOSTS
    path = f"/{REDACTED}" if hide_path and parts.path not in ("", "/") else parts.path
    query = REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, host, path, query, ""))


def restart_required(old: Config, new: Config) -> list[str]:
    """Dotted keys that differ between `old` and `new` and only take effect on restart."""
    return _restart_keys(old, new, ())


def _restart_keys(old: Any, new: Any, prefix: tuple[str, ...]) -> list[str]:
    changed: list[str] = []
    for f in dataclasses.fields(old):
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        path = (*prefix, f.name)
        if f.metadata.get("restart"):
            changed.append(".".join(path))
        elif dataclasses.is_dataclass(before) and type(before) is type(after):
            changed.extend(_restart_keys(before, after, path))
    return changed


def keep_running_values(running: Config, loaded: Config, keys: list[str]) -> Config:
    """`loaded`, except that the dotted `keys` keep their `running` values.

    Used on reload so settings that need a restart are not half-applied.
    """
    result = loaded
    for key in keys:
        result = _replace_path(result, running, key.split("."))
    return result


def _replace_path(target: Any, source: Any, path: list[str]) -> Any:
    name = path[0]
    if len(path) == 1:
        value = getattr(source, name)
    else:
        value = _replace_path(getattr(target, name), getattr(source, name), path[1:])
    return dataclasses.replace(target, **{name: value})
