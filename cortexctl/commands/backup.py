"""`cortexctl backup PATH` and `cortexctl restore PATH`: archives over the socket.

The file is written and read here, as the calling user; the daemon only
streams bytes, so it never opens a path named on this command line.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
from typing import Any

from cortexctl.client import Client
from cortexctl.output import Output

EXIT_OK = 0
EXIT_FAILED = 1
TRANSFER_TIMEOUT = 3600.0


def _backup(client: Client, args: argparse.Namespace, out: Output) -> int:
    target = os.path.abspath(args.path)
    if os.path.exists(target) and not args.force:
        print(f"cortexctl: {target} exists (use --force to replace it)", file=sys.stderr)
        return EXIT_FAILED
    tmp = f"{target}.part"
    header: dict[str, Any] = {}
    digest = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:

            def write(data: Any) -> None:
                if "chunk" in data:
                    chunk = base64.b64decode(data["chunk"])
                    digest.update(chunk)
                    fh.write(chunk)
                else:
                    header.update(data)

            result = client.call("backup.create", None, on_stream=write, timeout=TRANSFER_TIMEOUT)
            fh.flush()
            os.fsync(fh.fileno())
        if digest.hexdigest() != result["sha256"]:
            print("cortexctl: the archive arrived damaged (checksum mismatch)", file=sys.stderr)
            os.unlink(tmp)
            return EXIT_FAILED
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if out.as_json:
        out.json({"path": target, **result})
    else:
        files = ", ".join(f["name"] for f in result["files"])
        out.line(f"backup written to {target} ({result['bytes']} bytes): {files}")
    return EXIT_OK


def _restore(client: Client, args: argparse.Namespace, out: Output) -> int:
    path = os.path.abspath(args.path)
    with open(path, "rb") as fh:
        data = fh.read()
    if not args.yes and sys.stdin.isatty():
        answer = input(
            f"Replace the daemon's state with {path}? The current state is backed up first. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("cortexctl: restore cancelled", file=sys.stderr)
            return EXIT_FAILED
    begun = client.call(
        "restore.begin", {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    )
    step = int(begun["chunk_bytes"])
    for offset in range(0, len(data), step):
        client.call(
            "restore.upload",
            {
                "upload_id": begun["upload_id"],
                "offset": offset,
                "data": base64.b64encode(data[offset : offset + step]).decode(),
            },
        )
    result = client.call(
        "restore.commit",
        {"upload_id": begun["upload_id"], "config": args.config, "foreign": args.foreign},
        timeout=TRANSFER_TIMEOUT,
    )
    if out.as_json:
        out.json(result)
        return EXIT_OK
    out.line(f"restored: {', '.join(result['restored']) or 'no databases'}")
    if result["config_restored"]:
        out.line(f"configuration restored and reloaded: {', '.join(result['config_restored'])}")
    for skipped in result.get("config_skipped", []):
        out.line(f"not restored: {skipped['origin']} ({skipped['reason']})")
    out.line(f"the state before the restore is kept in {result['previous_state_backup']}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `backup` and `restore` to the top-level subparsers."""
    backup = sub.add_parser(
        "backup",
        help="write a backup archive of the daemon's state and configuration (admin)",
        epilog="example:\n  sudo cortexctl backup /root/cortex-$(date +%F).tar.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    backup.add_argument("path", help="where to write the archive (as you, mode 0600)")
    backup.add_argument("--force", action="store_true", help="replace an existing file")
    backup.set_defaults(run=_backup)
    restore = sub.add_parser(
        "restore",
        help="restore the daemon's state from a backup archive (admin)",
        epilog=(
            "The archive is verified first; a corrupt, truncated, tampered or foreign one is\n"
            "refused, and one this host did not sign needs root and --foreign. The current\n"
            "state is backed up under <state_dir>/backups before the swap.\nexamples:\n"
            "  sudo cortexctl restore /root/cortex-2026-11-20.tar.gz --config\n"
            "  sudo cortexctl restore /root/old-host.tar.gz --foreign"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("path", help="the archive to restore")
    restore.add_argument(
        "--config", action="store_true", help="also put the archived configuration back"
    )
    restore.add_argument(
        "--foreign",
        action="store_true",
        help="accept an archive not signed by this host (another host's, or an old one; root)",
    )
    restore.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    restore.set_defaults(run=_restore)
