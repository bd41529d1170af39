"""Asking before a change: on a terminal the operator answers; elsewhere only `-y` says yes."""

from __future__ import annotations

import sys

from cortexctl.errors import NotConfirmed


def ask(question: str) -> bool:
    """True when the operator answers yes on the terminal; False without one."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def require(question: str, yes: bool, what: str) -> None:
    """Go on only when `yes` (`-y`) was given or the operator agrees on the terminal.

    Raises:
        NotConfirmed: declined, or no terminal to ask on and no `-y`; nothing
            has been changed.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed(
            f"{what} needs confirmation: pass -y (--yes), or run it on a terminal to be asked"
        )
    if not ask(question):
        raise NotConfirmed(f"{what} cancelled; nothing changed")
