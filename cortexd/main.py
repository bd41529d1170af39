"""`cortexd` entry point: parse flags, load config, set up logging, run.

Exit codes: 0 clean stop, 1 start-up or runtime failure, 2 bad usage or
invalid configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import anyio

from cortexd import __version__
from cortexd.config import load_config
from cortexd.config.schema import LoggingConfig
from cortexd.log import LEVELS, setup_logging
from cortexd.protocol import ConfigError, CortexError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

log = logging.getLogger("cortexd.main")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cortexd",
        description="Host health, alerting, repair and local inference daemon.",
        epilog="Configuration: /etc/cortex/daemon.conf, ~/.cortex/daemon.conf, "
        "CORTEXD_SECTION__KEY environment variables; see docs/config.md.",
    )
    parser.add_argument("--config", metavar="PATH", help="read only this config file")
    parser.add_argument("--socket", metavar="PATH", help="socket path (server.socket_path)")
    parser.add_argument("--log-level", choices=sorted(LEVELS), type=str.upper, help="logging.level")
    parser.add_argument("--model", metavar="PATH", help="GGUF model (inference.model_path)")
    parser.add_argument("--state-dir", metavar="PATH", help="state directory (state_dir)")
    parser.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    parser.add_argument("--version", action="version", version=f"cortexd {__version__}")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.socket:
        out.setdefault("server", {})["socket_path"] = args.socket
    if args.log_level:
        out.setdefault("logging", {})["level"] = args.log_level
    if args.model is not None:
        out.setdefault("inference", {})["model_path"] = args.model
    if args.state_dir:
        out["state_dir"] = args.state_dir
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = overrides_from(args)
    try:
        loaded = load_config(args.config, overrides)
    except ConfigError as exc:
        print("cortexd: invalid configuration:", file=sys.stderr)
        for problem in exc.errors:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        for warning in loaded.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"configuration OK ({', '.join(loaded.sources) or 'defaults'})")
        return EXIT_OK
    setup_logging(loaded.config.logging or LoggingConfig())
    for warning in loaded.warnings:
        log.warning("%s", warning)

    from cortexd.app import Daemon  # after logging, so import-time problems are logged

    daemon = Daemon(loaded, config_path=args.config, overrides=overrides)
    try:
        anyio.run(daemon.run)
    except CortexError as exc:
        log.error("cannot start: %s", exc.message)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
