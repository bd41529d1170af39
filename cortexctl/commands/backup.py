"""`cortexctl backup PATH` and `cortexctl restore PATH`: archives over the socket.

The file is written and read here, as the calling user; the daemon only
streams bytes, so it never opens a path named on this command line.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cortexctl.commands.confirm import require
from cortexctl.errors import LocalFileError, TransferDamaged

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
TRANSFER_TIMEOUT = 3600.0
MIB = 1024 * 1024


def _mib(size: float) -> str:
    return f"{size / MIB:.1f} MiB"


def _backup(client: Client, args: Any, out: Output) -> int:
    target = os.path.abspath(args.path)
    if os.path.exists(target) and not args.force:
        raise LocalFileError(
            f"{target} exists (use --force to replace it)", hint="pass --force", path=target
        )
    tmp = f"{target}.part"
    header: dict[str, Any] = {}
    digest = hashlib.sha256()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise LocalFileError(f"cannot write {tmp}: {exc.strerror}", path=tmp) from None
    try:
        with os.fdopen(fd, "wb") as fh, out.progress("writing the backup") as progress:
            received = [0]

            def write(data: Any) -> None:
                if "chunk" in data:
                    chunk = base64.b64decode(data["chunk"])
                    digest.update(chunk)
                    fh.write(chunk)
                    received[0] += len(chunk)
                    size = header.get("size")
                    of = f" of {_mib(size)}" if size else ""
                    progress.update(f"{_mib(received[0])}{of}")
                else:
                    header.update(data)

            result = client.call("backup.create", None, on_stream=write, timeout=TRANSFER_TIMEOUT)
            fh.flush()
            os.fsync(fh.fileno())
        if digest.hexdigest() != result["sha256"]:
            raise TransferDamaged("the archive arrived damaged (checksum mismatch); nothing kept")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    out.result({"path": target, **result}, lambda r: _show_backup(out, r))
    return EXIT_OK


def _show_backup(out: Output, result: dict[str, Any]) -> None:
    files = ", ".join(f["name"] for f in result["files"])
    out.line(f"backup written to {result['path']} ({result['bytes']} bytes): {files}")


def _restore(client: Client, args: Any, out: Output) -> int:
    path = os.path.abspath(args.path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise LocalFileError(f"cannot read {path}: {exc.strerror}", path=path) from None
    what = "replacing the daemon's state" + (" and configuration" if args.config else "")
    require(
        f"Replace the daemon's state{' and configuration' if args.config else ''} with {path}?"
        " The current state is backed up first.",
        args.yes,
        what,
    )
    with out.progress("uploading the archive") as progress:
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
            progress.update(f"{_mib(min(offset + step, len(data)))} of {_mib(len(data))}")
        progress.label = "verifying and restoring"
        progress.update("")
        result = client.call(
            "restore.commit",
            {"upload_id": begun["upload_id"], "config": args.config, "foreign": args.foreign},
            timeout=TRANSFER_TIMEOUT,
        )
    out.result(result, lambda r: _show_restore(out, r))
    return EXIT_OK


def _show_restore(out: Output, result: dict[str, Any]) -> None:
    out.line(f"restored: {', '.join(result['restored']) or 'no databases'}")
    if result["config_restored"]:
        out.line(f"configuration restored and reloaded: {', '.join(result['config_restored'])}")
    for skipped in result.get("config_skipped", []):
        out.line(f"not restored: {skipped['origin']} ({skipped['reason']})")
    out.line(f"the state before the restore is kept in {result['previous_state_backup']}")


def register(sub: Any) -> None:
    """Add `backup` and `restore` to the top-level subparsers."""
    from cortexctl.parsing import command

    backup = command(
        sub,
        "backup",
        help="write a backup archive of the daemon's state and configuration (admin)",
        examples=[
            "sudo cortexctl backup /root/cortex-2026-11-20.tar.gz",
            "sudo cortexctl backup /root/cortex.tar.gz --force --json",
        ],
    )
    backup.add_argument(
        "path", metavar="PATH", help="where to write the archive (as you, mode 0600)"
    )
    backup.add_argument("--force", action="store_true", help="replace an existing file")
    backup.set_defaults(run=_backup)
    restore = command(
        sub,
        "restore",
        help="restore the daemon's state from a backup archive (admin)",
        notes=(
            "The archive is verified first; a corrupt, truncated, tampered or foreign one is\n"
            "refused, and one this host did not sign needs root and --foreign. The current\n"
            "state is backed up under <state_dir>/backups before the swap. On a terminal it\n"
            "asks first; elsewhere it needs -y."
        ),
        examples=[
            "sudo cortexctl restore /root/cortex-2026-11-20.tar.gz",
            "sudo cortexctl restore /root/cortex-2026-11-20.tar.gz --config -y",
            "sudo cortexctl restore /root/old-host.tar.gz --foreign",
        ],
    )
    restore.add_argument("path", metavar="PATH", help="the archive to restore")
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
