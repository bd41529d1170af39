"""The plugin manager: finds, vets, loads and isolates plugins (a daemon component).

Each sub-directory of `plugins.directory` is a plugin. Loading reads its
manifest, applies the trust rules and the version range, then asks a worker
process what the module offers (importing it there, never in the daemon).
A plugin that fails any step is marked `failed` with the reason and logged;
the daemon goes on. Check plugins add checks to the monitor (same result
type, same scheduler); command plugins add socket methods
`plugin.<name>.<command>`; notifier plugins add an action type to the
notifier (their manifest's `action_type`, default their name) whose `send`
runs in a worker like everything else; any plugin may register hooks. A
reload or a disable unregisters a plugin's action type first. Enabled/disabled
choices persist in `<state_dir>/plugins.json`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.abc import TaskGroup

from cortexd.config.schema import Config, PluginsConfig
from cortexd.host.files import PUBLIC_MODE, atomic_write
from cortexd.monitor.check import Check, CheckResult, Finding, Status
from cortexd.notify.actions import ActionTypes, Send
from cortexd.notify.model import Answer, DeliveryFailed
from cortexd.plugins.hooks import HOOKS, HookRegistry
from cortexd.plugins.manifest import (
    Manifest,
    PluginError,
    check_directory_trust,
    check_trust,
    load_manifest,
)
from cortexd.plugins.runner import PluginCallFailed, call_plugin
from cortexd.protocol import NotFound, Unavailable
from cortexd.server import Call, Method, Param, Registry

log = logging.getLogger(__name__)

STATE_FILE = "plugins.json"
MAX_PLUGINS = 256
LOAD_CONCURRENCY = 4
MAX_ANSWER_TEXT = 2048


@dataclass(slots=True)
class Plugin:
    """One plugin directory and what became of it."""

    name: str
    directory: str
    status: str = "found"  # loaded, failed, disabled, unsupported
    error: str | None = None
    manifest: Manifest | None = None
    check: bool = False
    commands: list[str] = field(default_factory=list)
    hooks: dict[str, int] = field(default_factory=dict)
    action_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        base = self.manifest.summary() if self.manifest else {"name": self.name}
        return {
            **base,
            "directory": self.directory,
            "status": self.status,
            "error": self.error,
            "check_id": check_id(self.name) if self.check and self.status == "loaded" else None,
            "commands": [f"plugin.{self.name}.{c}" for c in self.commands],
            "hooks": dict(self.hooks),
            "action_type": self.action_type if self.status == "loaded" else None,
        }


def check_id(name: str) -> str:
    return "plugin_" + name.replace("-", "_")


class PluginCheck(Check):
    """A check plugin seen by the monitor; `collect` calls its worker."""

    category = "plugins"
    alert_category = "system"

    def __init__(self, manifest: Manifest, timeout: float) -> None:
        self.manifest = manifest
        self.id = check_id(manifest.name)
        self.name = f"Plugin {manifest.name}"
        self.description = manifest.description
        self.interval = manifest.interval_seconds
        # The monitor's own deadline sits a little above the worker's kill time.
        self.timeout = timeout + 2
        self.call_timeout = timeout

    def collect(self) -> list[Finding]:
        try:
            answer = call_plugin(
                self.manifest.main_path,
                "check",
                {"settings": self.manifest.settings},
                self.call_timeout,
            )
        except PluginCallFailed as exc:
            return [Finding(f"plugin failed: {exc}", status=Status.ERROR)]
        items = answer if isinstance(answer, list) else [answer]
        return [_finding(item) for item in items] or [
            Finding("the plugin reported nothing", status=Status.ERROR)
        ]


def _finding(item: Any) -> Finding:
    if not isinstance(item, dict):
        return Finding(f"plugin answered {type(item).__name__}, not an object", status=Status.ERROR)
    try:
        status = Status(str(item.get("status", "")).upper())
    except ValueError:
        return Finding(f"plugin answered status {item.get('status')!r}", status=Status.ERROR)
    labels = item.get("labels") or {}
    details = item.get("details")
    return Finding(
        str(item.get("message", ""))[:1000],
        status=status,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        details=details if isinstance(details, dict) else {},
    )


class PluginManager:
    """Loads plugins and wires them into the monitor, the registry and the hooks."""

    name = "plugins"

    def __init__(
        self,
        config: Config,
        registry: Registry,
        hooks: HookRegistry,
        *,
        refresh_checks: Callable[[], None] = lambda: None,
        euid: int | None = None,
        action_types: ActionTypes | None = None,
    ) -> None:
        self.settings: PluginsConfig = config.plugins
        self.state_path = os.path.join(config.state_dir, STATE_FILE)
        self.registry = registry
        self.hooks = hooks
        self.refresh_checks = refresh_checks
        self.euid = os.geteuid() if euid is None else euid
        self.action_types = ActionTypes() if action_types is None else action_types
        # The rules may name our action types before the first load registers them.
        self.action_types.hold()
        self._held = True
        self.plugins: dict[str, Plugin] = {}
        self._lock = anyio.Lock()
        self._state = "starting"
        # Why the whole directory was refused (owner or mode), if it was.
        self.directory_error: str | None = None

    # -- lifecycle -------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        try:
            if self.settings.enabled:
                await self.reload()
            else:
                # No plugin checks: the monitor resolves what earlier ones left open.
                self.refresh_checks()
        finally:
            self._release()
        await self.hooks.run("startup", {})
        self._state = "running" if self.settings.enabled else "disabled"

    def apply_config(self, config: Config) -> None:
        # A changed directory or timeout takes effect at the next plugins.reload.
        self.settings = config.plugins

    async def stop(self) -> None:
        await self.hooks.run("shutdown", {})
        # Checks still finishing during shutdown must not start plugin code any more.
        # Held for good: the notifier must not re-check its rules against a shrinking set.
        self.action_types.hold()
        for plugin in self.plugins.values():
            self.hooks.remove_owner(f"plugin {plugin.name}")
            self.action_types.unregister_owner(f"plugin {plugin.name}")
        self._state = "stopped"

    def _release(self) -> None:
        if self._held:
            self._held = False
            self.action_types.release()

    def state(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for plugin in self.plugins.values():
            statuses[plugin.status] = statuses.get(plugin.status, 0) + 1
        if self.directory_error is not None:
            return {
                "state": "failed",
                "error": self.directory_error,
                "directory": self.settings.directory,
                "plugins": statuses,
            }
        return {"state": self._state, "directory": self.settings.directory, "plugins": statuses}

    # -- loading -----------------------------------------------------------

    def checks(self, config: Config) -> list[Check]:
        """The monitor's source of plugin checks (rebuilt on reload)."""
        return [
            PluginCheck(p.manifest, self.settings.timeout_seconds)
            for p in self.plugins.values()
            if p.status == "loaded" and p.check and p.manifest is not None
        ]

    async def reload(self) -> dict[str, Any]:
        """Unload every plugin and load the directory again; returns `list()`."""
        async with self._lock:
            # Held while reloading: the notifier checks its rules once, at the end.
            self.action_types.hold()
            try:
                return await self._reload()
            finally:
                self.action_types.release()

    async def _reload(self) -> dict[str, Any]:
        for plugin in self.plugins.values():
            self.hooks.remove_owner(f"plugin {plugin.name}")
            self.action_types.unregister_owner(f"plugin {plugin.name}")
        try:
            await anyio.to_thread.run_sync(
                check_directory_trust, self.settings.directory, self.euid
            )
        except PluginError as exc:
            self.directory_error = str(exc)
            log.error("plugins not loaded: %s", exc)
            self.plugins = {}
            self.refresh_checks()
            return self.listing()
        self.directory_error = None
        found = await anyio.to_thread.run_sync(self._scan)
        disabled = await anyio.to_thread.run_sync(self._read_disabled)
        limiter = anyio.CapacityLimiter(LOAD_CONCURRENCY)
        async with anyio.create_task_group() as tg:
            for plugin in found.values():
                tg.start_soon(self._load_guarded, plugin, disabled, limiter)
        found = _by_name(found)
        self.plugins = found
        for plugin in found.values():
            if plugin.status == "loaded":
                self._wire(plugin)
        self.refresh_checks()
        for plugin in found.values():
            if plugin.status == "loaded":
                await self.hooks.run("plugin_loaded", {"plugin": plugin.to_dict()})
        loaded = sum(p.status == "loaded" for p in found.values())
        log.info("%d of %d plugins loaded from %s", loaded, len(found), self.settings.directory)
        return self.listing()

    def _scan(self) -> dict[str, Plugin]:
        directory = self.settings.directory
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read the plugin directory %s: %s", directory, exc.strerror)
            return {}
        found = {}
        for name in names[:MAX_PLUGINS]:
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not name.startswith((".", "_")):
                found[name] = Plugin(name, path)
        return found

    async def _load_guarded(self, plugin: Plugin, disabled: set[str], limiter: Any) -> None:
        async with limiter:
            try:
                await self._load(plugin, disabled)
            except Exception as exc:  # isolation boundary: a plugin never fails the daemon
                log.exception("plugin %s: loading failed", plugin.name)
                plugin.status, plugin.error = "failed", f"{type(exc).__name__}: {exc}"

    async def _load(self, plugin: Plugin, disabled: set[str]) -> None:
        try:
            await anyio.to_thread.run_sync(check_trust, plugin.directory, self.euid)
            plugin.manifest = await anyio.to_thread.run_sync(load_manifest, plugin.directory)
        except PluginError as exc:
            plugin.status, plugin.error = "failed", str(exc)
            log.error("plugin %s not loaded: %s", plugin.name, exc)
            return
        plugin.name = plugin.manifest.name
        if {plugin.name, os.path.basename(plugin.directory)} & disabled:
            plugin.status = "disabled"
            return
        try:
            described = await anyio.to_thread.run_sync(
                call_plugin,
                plugin.manifest.main_path,
                "describe",
                {},
                self.settings.timeout_seconds,
            )
        except PluginCallFailed as exc:
            plugin.status, plugin.error = "failed", f"import failed: {exc}"
            log.error("plugin %s not loaded: %s", plugin.name, plugin.error)
            return
        plugin.check = bool(described.get("check"))
        plugin.commands = [c for c in described.get("commands", []) if _plain(c)]
        plugin.hooks = {h: int(p) for h, p in described.get("hooks", {}).items() if h in HOOKS}
        kind = plugin.manifest.plugin_type
        if kind == "check" and not plugin.check:
            plugin.status, plugin.error = "failed", "a check plugin must define check(settings)"
        elif kind == "command" and not plugin.commands:
            plugin.status, plugin.error = "failed", "a command plugin must define COMMANDS"
        elif kind == "notifier" and not described.get("send"):
            plugin.status = "failed"
            plugin.error = "a notifier plugin must define send(event, options)"
        else:
            plugin.status = "loaded"
            log.info("plugin %s %s loaded", plugin.name, plugin.manifest.version)

    def _wire(self, plugin: Plugin) -> None:
        assert plugin.manifest is not None
        main = plugin.manifest.main_path
        for hook, priority in plugin.hooks.items():
            self.hooks.add(
                hook,
                self._hook_handler(main, hook),
                priority=priority,
                owner=f"plugin {plugin.name}",
            )
        for command in plugin.commands:
            name = f"plugin.{plugin.name}.{command}"
            if not self.registry.known(name):
                self.registry.add([self._command_method(plugin.name, command, name)])
        if plugin.manifest.plugin_type == "notifier":
            self._wire_notifier(plugin, plugin.manifest)

    def _wire_notifier(self, plugin: Plugin, manifest: Manifest) -> None:
        owner = f"plugin {plugin.name}"
        try:
            self.action_types.register_action_type(
                manifest.action_type,
                _option_validator(manifest.action_options),
                self._notifier_send(plugin.name, manifest.main_path),
                owner=owner,
                timeout=self.settings.timeout_seconds,
            )
        except ValueError as exc:
            self.hooks.remove_owner(owner)
            plugin.status, plugin.error = "failed", str(exc)
            log.error("plugin %s not loaded: %s", plugin.name, exc)
            return
        plugin.action_type = manifest.action_type

    def _notifier_send(self, plugin_name: str, main: str) -> Send:
        timeout = self.settings.timeout_seconds

        def send(action: Any, event: dict[str, Any], entry_id: int | str, limit: float) -> Answer:
            args = {
                "event": {**event, "notification_id": entry_id, "action": action.name},
                "options": dict(action.options),
            }
            try:
                result = call_plugin(main, "send", args, min(timeout, limit))
            except PluginCallFailed as exc:
                raise DeliveryFailed(f"plugin {plugin_name}: {exc}") from None
            text = "" if result is None else orjson.dumps(result).decode()[:MAX_ANSWER_TEXT]
            return Answer(0, text)

        return send

    def _hook_handler(self, main: str, hook: str) -> Any:
        timeout = self.settings.timeout_seconds

        async def handler(payload: dict[str, Any]) -> Any:
            return await anyio.to_thread.run_sync(
                call_plugin, main, "hook", {"hook": hook, "payload": payload}, timeout
            )

        return handler

    def _command_method(self, plugin_name: str, command: str, method: str) -> Method:
        async def handler(call: Call) -> Any:
            # Looked up per call: a reload may have unloaded or changed the plugin.
            plugin = self.plugins.get(plugin_name)
            if plugin is None or plugin.status != "loaded" or command not in plugin.commands:
                raise NotFound(f"plugin command {method} is not loaded", method=method)
            assert plugin.manifest is not None
            try:
                result = await anyio.to_thread.run_sync(
                    call_plugin,
                    plugin.manifest.main_path,
                    "command",
                    {"command": command, "params": call.params["params"] or {}},
                    self.settings.timeout_seconds,
                )
            except PluginCallFailed as exc:
                raise Unavailable(
                    f"plugin {plugin_name} failed: {exc}", plugin=plugin_name
                ) from None
            return {"result": result}

        return Method(
            method,
            handler,
            params=(Param("params", dict),),
            access="admin",
            timeout=self.settings.timeout_seconds + 5,
            summary=f"command {command} of plugin {plugin_name}",
        )

    # -- enable / disable -----------------------------------------------------

    def listing(self) -> dict[str, Any]:
        return {
            "directory": self.settings.directory,
            "enabled": self.settings.enabled,
            "error": self.directory_error,
            "plugins": [p.to_dict() for p in self.plugins.values()],
            "hooks": self.hooks.summary(),
        }

    def on_disk(self) -> dict[str, Any]:
        """`listing()` from the directory as it is now (blocking: reads it).

        A plugin the last load did not see is `found` (its manifest read and
        its files vetted, nothing imported; `plugins.reload` loads it) or
        `failed` with the reason; one still loaded whose directory went is
        `removed` until the next reload unloads it.
        """
        try:
            check_directory_trust(self.settings.directory, self.euid)
        except PluginError as exc:
            return {**self.listing(), "error": str(exc)}
        known = {p.directory: p for p in self.plugins.values()}
        found = self._scan()
        plugins = []
        for plugin in found.values():
            if plugin.directory in known:
                plugins.append(known[plugin.directory].to_dict())
                continue
            try:
                check_trust(plugin.directory, self.euid)
                plugin.manifest = load_manifest(plugin.directory)
                plugin.name = plugin.manifest.name
            except PluginError as exc:
                plugin.status, plugin.error = "failed", str(exc)
            plugins.append(plugin.to_dict())
        on_disk = {p.directory for p in found.values()}
        for plugin in self.plugins.values():
            if plugin.directory not in on_disk:
                gone = f"{plugin.directory} is gone; `plugins reload` unloads it"
                plugins.append({**plugin.to_dict(), "status": "removed", "error": gone})
        return {**self.listing(), "plugins": plugins}

    async def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Enable or disable a plugin by name (persisted), then reload.

        Raises:
            NotFound: no such plugin in the directory.
        """
        if not any(
            p.name == name or os.path.basename(p.directory) == name for p in self.plugins.values()
        ):
            found = await anyio.to_thread.run_sync(self._scan)
            if name not in found:
                raise NotFound(f"no plugin {name!r} in {self.settings.directory}", plugin=name)
        disabled = await anyio.to_thread.run_sync(self._read_disabled)
        disabled = (disabled - {name}) if enabled else (disabled | {name})
        await anyio.to_thread.run_sync(self._write_disabled, disabled)
        return await self.reload()

    def _read_disabled(self) -> set[str]:
        try:
            with open(self.state_path, "rb") as handle:
                data = orjson.loads(handle.read())
        except FileNotFoundError:
            return set()
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring %s: %s", self.state_path, exc)
            return set()
        return {str(n) for n in data.get("disabled", [])}

    def _write_disabled(self, disabled: set[str]) -> None:
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        data = orjson.dumps({"disabled": sorted(disabled)})
        atomic_write(self.state_path, data, mode=PUBLIC_MODE)

    # -- check hooks -----------------------------------------------------------

    async def before_check(self, check: Check) -> None:
        if self.hooks.count("pre_check"):
            await self.hooks.run("pre_check", {"check_id": check.id})

    async def after_check(self, result: CheckResult) -> None:
        if self.hooks.count("post_check"):
            await self.hooks.run("post_check", result.to_dict())


def _by_name(found: dict[str, Plugin]) -> dict[str, Plugin]:
    """Key plugins by their manifest name; a second plugin claiming a name fails."""
    out: dict[str, Plugin] = {}
    for plugin in found.values():
        if plugin.name in out:
            plugin.status = "failed"
            plugin.error = f"another plugin ({out[plugin.name].directory}) is named {plugin.name!r}"
            out[f"{plugin.name} ({os.path.basename(plugin.directory)})"] = plugin
            continue
        out[plugin.name] = plugin
    return out


def _option_validator(
    declared: dict[str, bool] | None,
) -> Callable[[Any], list[tuple[str, str]]]:
    """Check a rule's action options against a notifier manifest's `action_options`."""

    def validate(options: Any) -> list[tuple[str, str]]:
        if declared is None:
            return []
        problems = [(k, "unknown field for this action type") for k in options if k not in declared]
        problems.extend(
            (k, "required for this action type")
            for k, required in sorted(declared.items())
            if required and options.get(k) in (None, "", [])
        )
        return problems

    return validate


def _plain(command: str) -> bool:
    return bool(command) and all(c.isalnum() or c in "_-" for c in command)
