"""`cortexctl`: the command-line client.

Exit codes: 0 success, 1 the daemon answered with an error, 2 bad usage,
3 the daemon could not be reached (with a hint on what to do).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import TextIO

from cortexctl.client import DEFAULT_TIMEOUT, Client, DaemonUnreachable
from cortexctl.output import Output
from cortexd.protocol import CortexError, client_socket_path

EXIT_OK = 0
EXIT_DAEMON_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  cortexctl status
  cortexctl --json status | jq .components
  cortexctl config show server
  sudo cortexctl config reload

exit codes: 0 ok, 1 daemon error, 2 usage, 3 cannot connect
"""

Command = Callable[[Client, argparse.Namespace, Output], int]

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
)
# Which modules a top-level command needs. Only those are imported and
# registered, so a command pays for its own parser, not for fifty others
# (building every parser took a third of `cortexctl status`). Help, errors and
# unknown words get every module. tests/test_cortexctl.py keeps this true.
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
}
_OPTIONS_WITH_VALUES = frozenset({"--socket", "--timeout"})


def requested_command(argv: list[str]) -> str | None:
    """The top-level command word in `argv`, skipping global options and their values."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _OPTIONS_WITH_VALUES:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def modules_for(argv: list[str] | None) -> tuple[str, ...]:
    """The command modules to register for `argv` (all of them when in doubt)."""
    command = requested_command(argv) if argv is not None else None
    return COMMAND_OWNERS.get(command or "", COMMAND_MODULES)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of `modules` (default: all)."""
    parser = argparse.ArgumentParser(
        prog="cortexctl",
        description="Control and query the cortexd daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--socket", metavar="PATH", help=f"daemon socket (default: {client_socket_path()})"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for programs")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"reply timeout (default: {DEFAULT_TIMEOUT:g})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if name in modules:
            importlib.import_module(f"cortexctl.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(modules_for(words))
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        code = int(exc.code or 0)
        # `doctor` is a monitoring plugin: its usage errors are UNKNOWN (3).
        return 3 if code == EXIT_USAGE and "doctor" in words else code
    out = Output(args.json, stdout or sys.stdout)
    run: Command = args.run
    if getattr(args, "offline", False):
        # Commands that need no daemon (`plugins create`) run without a client.
        return int(args.run(None, args, out))
    try:
        with Client(args.socket, timeout=args.timeout) as client:
            return run(client, args, out)
    except DaemonUnreachable as exc:
        print(f"cortexctl: {exc}", file=sys.stderr)
        print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimeoutError:
        print(f"cortexctl: no answer within {args.timeout:g}s", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    except CortexError as exc:
        if out.as_json:
            out.json({"error": exc.to_error()})
        else:
            print(f"cortexctl: {exc.code.name}: {exc.message}", file=sys.stderr)
            for problem in getattr(exc, "errors", []):
                print(f"  {problem}", file=sys.stderr)
        return EXIT_DAEMON_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `cortexctl status | head -1`: the reader left; that is not an error.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
