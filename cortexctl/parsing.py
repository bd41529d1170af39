"""How cortexctl builds its argument parsers.

Every parser, the top-level one and each (sub)command's, takes the global
options (`--socket`, `--json`, `--timeout`), so they work anywhere on the line
as they do in systemctl and amtool; and every help page ends with examples.
A usage error raises `UsageError`, which the command line reports (as JSON
with `--json`) at its edge.

Metavars name what completion offers for a value (see `cortexctl.completion`):
`ALERT_ID`, `CHECK_ID`, `CATEGORY`, `FIX_ID`, `PLUGIN`, `PATH`.
"""

from __future__ import annotations

import argparse
import os
import sys

from cortexctl.client import DEFAULT_TIMEOUT
from cortexctl.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

GLOBAL_TITLE = "global options (anywhere on the line)"
DEFAULT_COLUMNS = 80


def terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, without importing shutil.

    argparse builds a help formatter for every option it adds, and its
    default one imports shutil (and with it zlib, bz2 and lzma) to learn the
    width: a tenth of a `cortexctl status` run for a page nobody asked for.
    The rule is shutil's: `COLUMNS`, then the terminal, then 80.
    """
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or DEFAULT_COLUMNS


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and examples; learns the width lazily."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage=self.format_usage())


def seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Add `--socket`, `--json` and `--timeout` to `parser`.

    Below the top level they default to SUPPRESS, so a command's parser sets
    them only when they are given there and otherwise leaves what the top
    level parsed (`cortexctl --json status` and `cortexctl status --json`).
    """
    from cortexd.protocol import client_socket_path

    group = parser.add_argument_group(GLOBAL_TITLE)
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help=f"daemon socket (default: {client_socket_path()})",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print JSON for programs (JSON lines for streamed answers)",
    )
    group.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT if top else argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"reply timeout (default: {DEFAULT_TIMEOUT:g})",
    )


def epilog(examples: Sequence[str], notes: str = "") -> str:
    """Notes, then the examples: every help page ends with them."""
    text = "examples:\n" + "".join(f"  {line}\n" for line in examples)
    return f"{notes.rstrip()}\n\n{text}" if notes else text


def command(
    sub: Any,
    name: str,
    *,
    help: str,
    examples: Sequence[str],
    description: str | None = None,
    notes: str = "",
) -> argparse.ArgumentParser:
    """A (sub)command's parser with the global options and examples at the end of its help."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=epilog(examples, notes),
        formatter_class=HelpFormatter,
    )
    add_global_options(parser, top=False)
    return parser


def actions(parser: argparse.ArgumentParser, dest: str, metavar: str = "ACTION") -> Any:
    """The subparsers of `parser` (one per action), required unless the caller says otherwise."""
    return parser.add_subparsers(dest=dest, metavar=metavar, required=True)
