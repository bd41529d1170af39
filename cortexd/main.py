"""`cortexd` entry point: parse flags, load config, set up logging, run.

Exit codes: 0 clean stop, 1 start-up or runtime failure, 2 bad usage or
invalid configuration, 130 stopped by a second interrupt before in-flight
work finished.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from cortexd import __version__
from cortexd.config import SYSTEM_CONFIG, load_config
from cortexd.log import LEVELS, setup_logging
from cortexd.protocol import ConfigError, CortexError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT

if TYPE_CHECKING:
    import argparse

log = logging.getLogger("cortexd.main")

_LEVEL_CHOICES = tuple(sorted({*LEVELS, "WARNING"}))


@dataclass(frozen=True)
class Flag:
    """One command-line option: `--name VALUE` (or `--name=VALUE`), or a switch."""

    name: str
    help: str
    metavar: str | None = None  # None: a switch that takes no value
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


FLAGS = (
    Flag("--config", "read only this config file", "PATH"),
    Flag("--socket", "socket path (server.socket_path)", "PATH"),
    Flag("--log-level", "logging.level", "LEVEL", choices=_LEVEL_CHOICES),
    Flag("--model", "GGUF model (inference.model_path)", "PATH"),
    Flag("--state-dir", "state directory (state_dir)", "PATH"),
    Flag("--check-config", "validate the configuration, print problems and exit (2 when invalid)"),
)
_BY_NAME = {flag.name: flag for flag in FLAGS}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `cortexd`, for help and usage errors (from FLAGS)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="cortexd",
        description="Host health, alerting, repair and local inference daemon.",
        epilog=f"Configuration: {SYSTEM_CONFIG}, ~/.cortex/daemon.conf, "
        "CORTEXD_SECTION__KEY environment variables, then these flags; see docs/config.md. "
        "Exit codes: 0 stopped cleanly, 1 failed, 2 bad usage or configuration.",
    )
    for flag in FLAGS:
        if flag.metavar is None:
            parser.add_argument(flag.name, action="store_true", help=flag.help)
        elif flag.choices:
            parser.add_argument(flag.name, choices=flag.choices, type=str.upper, help=flag.help)
        else:
            parser.add_argument(flag.name, metavar=flag.metavar, help=flag.help)
    parser.add_argument("--version", action="version", version=f"cortexd {__version__}")
    return parser


def parse_args(argv: list[str]) -> dict[str, Any]:
    """The flags in `argv`, by `Flag.dest` (None or False when absent).

    Well-formed flags are read here. Anything else (`--help`, `--version`,
    an unknown or incomplete flag, a bad choice) goes to the argparse parser
    built from the same FLAGS, which prints help or the usage error and
    exits. argparse and gettext would otherwise stay in the long-running
    daemon's memory (a few hundred kilobytes) for a parse it does once.
    """
    args: dict[str, Any] = {f.dest: None if f.metavar else False for f in FLAGS}
    rest = iter(argv)
    for arg in rest:
        name, equals, value = arg.partition("=")
        flag = _BY_NAME.get(name)
        if flag is None or (flag.metavar is None and equals):
            return vars(build_parser().parse_args(argv))
        if flag.metavar is None:
            args[flag.dest] = True
            continue
        if not equals:
            value = next(rest, None)  # type: ignore[assignment]
            if value is None or value.startswith("-"):
                return vars(build_parser().parse_args(argv))
        if flag.choices:
            value = value.upper()
            if value not in flag.choices:
                return vars(build_parser().parse_args(argv))
        args[flag.dest] = value
    return args


def overrides_from(args: Mapping[str, Any]) -> dict[str, Any]:
    """The config layer the command-line flags make (highest precedence)."""
    out: dict[str, Any] = {}
    if args["socket"]:
        out.setdefault("server", {})["socket_path"] = args["socket"]
    if args["log_level"]:
        out.setdefault("logging", {})["level"] = args["log_level"]
    if args["model"] is not None:
        out.setdefault("inference", {})["model_path"] = args["model"]
    if args["state_dir"]:
        out["state_dir"] = args["state_dir"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the daemon in the foreground; returns the process exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overrides = overrides_from(args)
    try:
        loaded = load_config(args["config"], overrides)
    except ConfigError as exc:
        print("cortexd: invalid configuration:", file=sys.stderr)
        for problem in exc.errors:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args["check_config"]:
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"configuration OK ({', '.join(loaded.sources) or 'defaults'})")
        return EXIT_OK
    setup_logging(loaded.config.logging)
    for warning in loaded.warnings:
        log.warning("%s", warning)

    from cortexd.app import Daemon  # after logging, so import-time problems are logged

    try:
        daemon = Daemon(loaded, config_path=args["config"], overrides=overrides)
        anyio.run(daemon.run)
    except KeyboardInterrupt:  # an interrupt before the signal handlers were in place
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        return _report_failure(group)
    except (CortexError, OSError) as exc:
        return _report_failure(exc)
    return EXIT_INTERRUPTED if daemon.forced else EXIT_OK


def _report_failure(error: BaseException) -> int:
    """Log why the daemon could not run: one clear line for expected failures
    (socket in use, unsafe path, cannot bind), a traceback for bugs.

    A configuration file read only at start-up (the notification rules) that
    does not validate is invalid configuration like daemon.conf: exit code 2.
    """
    leaves = _leaves(error)
    if any(isinstance(e, KeyboardInterrupt) for e in leaves):
        return EXIT_INTERRUPTED
    invalid = [e for e in leaves if isinstance(e, ConfigError)]
    if invalid:
        for config_error in invalid:
            for problem in config_error.errors:
                log.error("cannot start: invalid configuration: %s", problem)
        return EXIT_CONFIG
    for exc in leaves:
        if isinstance(exc, CortexError):
            log.error("cannot start: %s", exc.message)
        elif isinstance(exc, OSError):
            log.error("cannot start: %s", exc)
        else:
            log.critical("cortexd failed", exc_info=exc)
    return EXIT_FAILURE


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


if __name__ == "__main__":
    sys.exit(main())
