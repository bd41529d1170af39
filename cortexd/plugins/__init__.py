"""Plugins (check, notifier, command) loaded from a directory, and the hook registry."""

from cortexd.plugins.hooks import HOOKS, HookRegistry

__all__ = ["HOOKS", "HookRegistry"]
