"""Conditions the command line itself reports (the daemon's own are `cortexd.protocol`'s).

Commands raise them; `cortexctl.cli` turns each into a message on stderr (or
a JSON error object with `--json`) and an exit code, and nothing else does.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A command could not do what it was asked; `name` is the stable symbol in JSON."""

    name: ClassVar[str] = "FAILED"
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.data = data

    def to_error(self) -> dict[str, Any]:
        """The `error` object printed with `--json`."""
        data: dict[str, Any] = {"name": self.name, **self.data}
        if self.hint:
            data["hint"] = self.hint
        return {"message": self.message, "data": data}


class UsageError(CommandError):
    """The command line does not parse, or asks for something contradictory."""

    name = "USAGE"
    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class NotConfirmed(CommandError):
    """A change that needs confirmation got none (no `-y`, and no terminal to ask on)."""

    name = "NOT_CONFIRMED"


class LocalFileError(CommandError):
    """A file named on the command line cannot be read or written here."""

    name = "FILE_ERROR"


class TransferDamaged(CommandError):
    """What arrived over the socket does not match its checksum."""

    name = "DAMAGED"


class Unreachable(CommandError):
    """The daemon's socket could not be opened, or the connection broke."""

    name = "UNREACHABLE"
    exit_code = EXIT_UNREACHABLE


class UntrustedPeer(Unreachable):
    """The socket's directory, or the process answering on it, is not the expected user's."""

    name = "UNTRUSTED_SOCKET"


class NoAnswer(CommandError):
    """The daemon did not answer within the timeout."""

    name = "NO_ANSWER"


class Interrupted(CommandError):
    """Ctrl-C; the request was cancelled on the daemon."""

    name = "INTERRUPTED"
    exit_code = EXIT_INTERRUPTED
