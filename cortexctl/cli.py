"""`cortexctl`: the command-line client.

Exit codes: 0 success, 1 the daemon answered with an error (or the command
failed), 2 bad usage, 3 the daemon could not be reached (with a hint on what
to do), 130 interrupted. `doctor` follows the monitoring-plugin convention
instead (see `cortexctl doctor --help`).

Start-up is most of what a `cortexctl status` costs, so this module imports
only what every command needs; a command line made of one of the polling
commands (`FAST_COMMANDS`) and global options is parsed without argparse,
and any other builds only the parsers of its own command module.
"""

from __future__ import annotations

import sys

from cortexctl.client import DEFAULT_TIMEOUT, Client, DaemonUnreachable, UntrustedSocket
from cortexctl.errors import (
    CommandError,
    Interrupted,
    NoAnswer,
    Unreachable,
    UntrustedPeer,
    UsageError,
)
from cortexctl.output import Output
from cortexd.protocol import CortexError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any, TextIO

    Command = Callable[[Client | None, Any, Output], int]

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
DOCTOR_UNKNOWN = 3

NOTES = """\
exit codes: 0 ok, 1 daemon error, 2 usage, 3 cannot connect, 130 interrupted
(doctor: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"""
EXAMPLES = (
    "cortexctl status",
    "cortexctl status --json | jq .components",
    "cortexctl config show server",
    "sudo cortexctl config reload",
    "cortexctl completion bash > ~/.local/share/bash-completion/completions/cortexctl",
)

# Each capability adds its commands in one module with a `register(sub)`;
# modules are registered in this order.
COMMAND_MODULES = (
    "core",
    "monitor",
    "alerts",
    "inference",
    "logs",
    "repair",
    "healing",
    "plugins",
    "notify",
    "backup",
    "update",
    "completion",
)
# Which modules a top-level command needs. Only those are imported and
# registered, so a command pays for its own parser, not for fifty others.
# Help, errors and unknown words get every module. tests/test_cortexctl.py
# keeps this true.
COMMAND_OWNERS: dict[str, tuple[str, ...]] = {
    "ping": ("core",),
    "version": ("core",),
    "status": ("core",),
    "config": ("core",),
    "shutdown": ("core",),
    "health": ("monitor",),
    "doctor": ("monitor", "repair"),  # repair adds `doctor --fix`
    "alerts": ("alerts",),
    "ask": ("inference",),
    "explain": ("inference",),
    "inference": ("inference",),
    "model": ("inference",),
    "logs": ("logs",),
    "repair": ("repair",),
    "healing": ("healing",),
    "plugins": ("plugins",),
    "notify": ("notify",),
    "dead-letter": ("notify",),
    "backup": ("backup",),
    "restore": ("backup",),
    "update": ("update",),
    "completion": ("completion",),
}
# Commands without options or arguments of their own, which monitoring and
# shell prompts run every few seconds: their command lines skip argparse,
# whose import and parser building would be half of their cost. The module
# named here lists them in its SIMPLE_COMMANDS.
FAST_COMMANDS = {"ping": "core", "version": "core", "status": "core", "health": "monitor"}
GLOBAL_VALUE_OPTIONS = frozenset({"--socket", "--timeout"})
COMPLETE_WORD = "__complete"


class Args:
    """What a fast command line parsed into: the attributes argparse would have set."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def requested_command(argv: list[str]) -> str | None:
    """The top-level command word in `argv`, skipping global options and their values."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """The command modules to register for `argv` (all of them when in doubt)."""
    command = requested_command(argv) if argv is not None else None
    return COMMAND_OWNERS.get(command or "", COMMAND_MODULES)


def fast_parse(argv: list[str]) -> Args | None:
    """Parse `[global options] COMMAND [global options]` for a FAST_COMMAND without argparse.

    Returns None for anything else (help, other words, abbreviations, bad
    values): argparse then parses the line and reports any error.
    """
    values: dict[str, Any] = {"socket": None, "json": False, "timeout": DEFAULT_TIMEOUT}
    command = None
    words = iter(argv)
    for word in words:
        name, eq, inline = word.partition("=")
        if word == "--json":
            values["json"] = True
        elif name in GLOBAL_VALUE_OPTIONS:
            value = inline if eq else next(words, None)
            if value is None or (not eq and value.startswith("-")):
                return None
            if name == "--socket":
                values["socket"] = value
            else:
                try:
                    seconds = float(value)
                except ValueError:
                    return None
                if not 0 < seconds < float("inf"):
                    return None
                values["timeout"] = seconds
        elif word in FAST_COMMANDS and command is None:
            command = word
        else:
            return None
    if command is None:
        return None
    # __import__ rather than importlib.import_module: importlib imports warnings.
    name = f"cortexctl.commands.{FAST_COMMANDS[command]}"
    __import__(name)
    return Args(command=command, run=sys.modules[name].SIMPLE_COMMANDS[command], **values)


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of `modules` (default: all)."""
    import importlib

    from cortexctl.parsing import HelpFormatter, Parser, add_global_options, epilog

    parser = Parser(
        prog="cortexctl",
        description="Control and query the cortexd daemon.",
        epilog=epilog(EXAMPLES, NOTES),
        formatter_class=HelpFormatter,
    )
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if name in modules:
            importlib.import_module(f"cortexctl.commands.{name}").register(sub)
    return parser


def parse(argv: list[str]) -> Any:
    """`argv` parsed: through the fast path when it can, else with argparse.

    Raises:
        UsageError: the line does not parse.
        SystemExit: `--help` was printed (code 0).
    """
    fast = fast_parse(argv)
    if fast is not None:
        return fast
    return build_parser(modules_for(argv)).parse_args(argv)


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    words = sys.argv[1:] if argv is None else list(argv)
    stream = stdout if stdout is not None else sys.stdout
    if words[:1] == [COMPLETE_WORD]:
        from cortexctl.completion import complete

        return complete(words[1:], stream)
    doctor = requested_command(words) == "doctor"
    try:
        args = parse(words)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except UsageError as exc:
        out = Output("--json" in words, stream)
        sys.stderr.write(exc.usage)
        return _report(out, exc, DOCTOR_UNKNOWN if doctor else exc.exit_code)
    out = Output(args.json, stream)
    try:
        return _run(args, out)
    except BrokenPipeError:
        # `cortexctl status | head -1`: the reader left; that is not an error.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


def _run(args: Any, out: Output) -> int:
    """Run the parsed command, translating every failure into a report and an exit code."""
    run: Command = args.run
    doctor = args.command == "doctor"
    try:
        if getattr(args, "offline", False):
            # Commands that need no daemon (`plugins create`, `completion`) run without a client.
            return run(None, args, out)
        with Client(args.socket, timeout=args.timeout) as client:
            return run(client, args, out)
    except DaemonUnreachable as exc:
        kind = UntrustedPeer if isinstance(exc, UntrustedSocket) else Unreachable
        unreachable = kind(str(exc), hint=exc.hint, socket=exc.path, reason=exc.reason)
        return _report(out, unreachable, unreachable.exit_code)
    except TimeoutError:
        late = NoAnswer(f"no answer within {args.timeout:g}s", timeout=args.timeout)
        return _report(out, late, DOCTOR_UNKNOWN if doctor else late.exit_code)
    except CortexError as exc:
        return _report(out, exc, DOCTOR_UNKNOWN if doctor else EXIT_DAEMON_ERROR)
    except CommandError as exc:
        return _report(out, exc, DOCTOR_UNKNOWN if doctor else exc.exit_code)
    except KeyboardInterrupt:
        interrupted = Interrupted("interrupted; the request was cancelled")
        return _report(out, interrupted, interrupted.exit_code)


def _report(out: Output, exc: CortexError | CommandError, code: int) -> int:
    """Say what went wrong: one JSON line on stdout with `--json`, else lines on stderr."""
    out.clear_status()
    if out.as_json:
        out.json_line({"error": exc.to_error()})
        return code
    if isinstance(exc, CortexError):
        lines = [f"cortexctl: {exc.code.name}: {exc.message}"]
        problems = getattr(exc, "errors", [])
        if len(problems) > 1:
            # The message lists them too, on one line; one per line reads better.
            lines = [f"cortexctl: {exc.code.name}: invalid configuration:"]
            lines += [f"  {problem}" for problem in problems]
        if isinstance(exc.data, dict) and exc.data.get("hint"):
            lines.append(f"hint: {exc.data['hint']}")
    else:
        lines = [f"cortexctl: {exc.message}"]
        if exc.hint:
            lines.append(f"hint: {exc.hint}")
    sys.stderr.write("".join(line + "\n" for line in lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
