"""Shell completion for cortexctl (bash, zsh, fish).

`cortexctl completion SHELL` prints a small script; on each TAB the script
runs `cortexctl __complete WORD… CURRENT`, which walks the same argparse
parsers the command line uses and prints the candidates, one per line, with
an optional tab-separated description (the way kubectl and gh complete).
Commands, subcommands, options and choices come from the parsers; check ids
and categories from the tables below; alert ids, fix ids and plugin names
from the daemon, with a short timeout so that TAB never hangs when no daemon
answers. A value that is a file prints the line `__files__`, and the shell
completes paths itself.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator
    from typing import Any, TextIO

    from cortexctl.client import Client

# The daemon's built-in checks and their categories, for `doctor --check`
# and `--category` (tests/test_completion.py compares them with checks.list).
CHECK_IDS = (
    "cpu_usage",
    "cpu_load",
    "memory",
    "swap_usage",
    "disk_space",
    "file_descriptors",
    "zombie_processes",
    "process_count",
    "systemd_failed",
    "apt_status",
    "apt_updates",
    "security_updates",
    "cve_scan",
    "dependency_conflicts",
    "time_sync",
    "dns_resolution",
    "network_connectivity",
    "reboot_required",
    "apt_locks",
    "cortex_world_writable",
    "cortex_permissions",
    "cortex_databases",
)
CATEGORIES = (
    "disk",
    "memory",
    "network",
    "packages",
    "performance",
    "security",
    "services",
    "system",
)
SHELLS = ("bash", "zsh", "fish")
# Connecting and answering, each: TAB must stay instant when no daemon answers.
DAEMON_TIMEOUT = 0.5
FILES = "__files__"
COMPLETE_WORD = "__complete"


def _alerts(client: Client) -> Iterator[tuple[str, str]]:
    for alert in client.call("alerts.list", {"state": "active"})["alerts"]:
        yield alert["id"], f"{alert['severity']} {alert['title']}"


def _fixes(client: Client) -> Iterator[tuple[str, str]]:
    for fix in client.call("fixes.list")["fixes"]:
        yield fix["id"], fix["description"]


def _plugins(client: Client) -> Iterator[tuple[str, str]]:
    for plugin in client.call("plugins.list")["plugins"]:
        yield plugin["name"], f"{plugin['status']} {plugin.get('description', '')}".strip()


# Values named by an argument's metavar (see cortexctl.parsing).
FROM_DAEMON: dict[str, Callable[[Client], Iterator[tuple[str, str]]]] = {
    "ALERT_ID": _alerts,
    "FIX_ID": _fixes,
    "PLUGIN": _plugins,
}
STATIC = {"CHECK_ID": CHECK_IDS, "CATEGORY": CATEGORIES}
PATHS = frozenset({"PATH"})


def script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    return {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell]


def complete(words: list[str], stream: TextIO) -> int:
    """Print the candidates for the last of `words` (the word being typed, maybe empty).

    `words` are the command line's words after `cortexctl`. Always exits 0:
    completion shows nothing rather than an error.
    """
    for candidate, description in candidates(words or [""]):
        stream.write(f"{candidate}\t{description}\n" if description else f"{candidate}\n")
    return 0


def candidates(words: list[str]) -> list[tuple[str, str]]:
    """(value, description) pairs completing `words[-1]` after `words[:-1]`."""
    from cortexctl.cli import build_parser, modules_for
    from cortexctl.errors import UsageError

    *before, current = words
    try:
        parser = build_parser(modules_for(before if before else None))
    except UsageError:
        return []
    parser, action, socket, given = _walk(parser, before)
    if action is not None:
        return _values(action, current, socket)
    if current.startswith("-"):
        return _matching(current, _options(parser))
    found = _matching(current, _subcommands(parser))
    positional = _positional(parser, given)
    if positional is not None:
        found += _values(positional, current, socket)
    return found


def _walk(
    parser: argparse.ArgumentParser, words: list[str]
) -> tuple[argparse.ArgumentParser, argparse.Action | None, str | None, int]:
    """Follow `words` down the subcommands.

    Returns the parser reached, the option still waiting for its value (or
    None), any `--socket` given, and how many plain words that parser has
    taken as positional arguments.
    """
    # argparse keeps its actions private; completion has to read them.
    waiting: argparse.Action | None = None
    socket: str | None = None
    given = 0
    for word in words:
        if waiting is not None:
            if "--socket" in waiting.option_strings:
                socket = word
            waiting = None
            continue
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            action = parser._option_string_actions.get(name)
            if action is not None and action.nargs != 0:
                if not eq:
                    waiting = action
                elif name == "--socket":
                    socket = value
            continue
        sub = _subparsers(parser)
        if sub is not None and word in sub.choices:
            parser = sub.choices[word]
            given = 0
        else:
            given += 1
    return parser, waiting, socket, given


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action
    return None


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    sub = _subparsers(parser)
    if sub is None:
        return []
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    return [(name, helps.get(name, "")) for name in sub.choices]


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    found = []
    for action in parser._actions:
        if action.help == "==SUPPRESS==":
            continue
        found += [(option, action.help or "") for option in action.option_strings]
    return found


def _positional(parser: argparse.ArgumentParser, given: int) -> argparse.Action | None:
    """The positional argument that the next plain word fills, if any."""
    sub = _subparsers(parser)
    for action in parser._actions:
        if action.option_strings or action is sub:
            continue
        if action.nargs in ("*", "+") or given == 0:
            return action
        given -= 1
    return None


def _values(action: argparse.Action, current: str, socket: str | None) -> list[tuple[str, str]]:
    if action.choices is not None:
        return _matching(current, [(str(c), "") for c in action.choices])
    kind = action.metavar if isinstance(action.metavar, str) else None
    if kind in PATHS:
        return [(FILES, "")]
    if kind in STATIC:
        return _matching(current, [(value, "") for value in STATIC[kind]])
    ask = FROM_DAEMON.get(kind or "")
    if ask is None:
        return []
    return _matching(current, _from_daemon(ask, socket))


def _from_daemon(
    ask: Callable[[Client], Iterator[tuple[str, str]]], socket: str | None
) -> list[tuple[str, str]]:
    from cortexctl.client import Client, DaemonUnreachable
    from cortexd.protocol import CortexError

    try:
        with Client(socket, timeout=DAEMON_TIMEOUT) as client:
            return list(ask(client))
    except (DaemonUnreachable, CortexError, OSError, KeyError, TypeError):
        return []


def _matching(prefix: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(value, " ".join(text.split())) for value, text in pairs if value.startswith(prefix)]


BASH = """\
# bash completion for cortexctl (generated by `cortexctl completion bash`)
_cortexctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} line
    local IFS=$'\\n'
    local -a lines
    lines=($("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
    COMPREPLY=()
    if [[ ${lines[0]} == __files__ ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
    fi
    for line in "${lines[@]}"; do
        COMPREPLY+=("${line%%$'\\t'*}")
    done
}
complete -F _cortexctl cortexctl
"""

ZSH = """\
#compdef cortexctl
# zsh completion for cortexctl (generated by `cortexctl completion zsh`)
_cortexctl() {
    local line out
    local -a values shown
    out=$("${words[1]}" __complete "${(@)words[2,CURRENT]}" 2>/dev/null) || return 1
    if [[ $out == __files__ ]]; then
        _files
        return
    fi
    for line in "${(@f)out}"; do
        [[ -n $line ]] || continue
        values+=("${line%%$'\\t'*}")
        shown+=("${line/$'\\t'/  -- }")
    done
    (( ${#values} )) && compadd -l -d shown -a values
}
# Autoloaded from fpath (as _cortexctl) this file is the function's first
# call: complete now. Sourced, it registers the function instead.
if [[ $funcstack[1] == _cortexctl ]]; then
    _cortexctl "$@"
elif (( $+functions[compdef] )); then
    compdef _cortexctl cortexctl
fi
"""

FISH = """\
# fish completion for cortexctl (generated by `cortexctl completion fish`)
function __cortexctl_complete
    set -l tokens (commandline -opc)
    set -l current (commandline -ct)
    set -l lines ($tokens[1] __complete $tokens[2..-1] $current 2>/dev/null)
    if test "$lines[1]" = __files__
        __fish_complete_path $current
    else
        printf '%s\\n' $lines
    end
end
complete -c cortexctl -f -a '(__cortexctl_complete)'
"""
