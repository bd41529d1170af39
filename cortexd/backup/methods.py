"""Socket methods of backup and restore (docs/protocol.md).

The archive travels over the socket both ways, so the daemon never reads or
writes a path the caller names: `backup.create` streams it as base64 chunks
in stream notifications; a restore uploads it in chunks small enough for the
request line limit (`restore.begin`, `restore.upload`…, `restore.commit`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from typing import TYPE_CHECKING, Any

import anyio

from cortexd.backup.service import BackupService
from cortexd.config.collect import ConfigTargets
from cortexd.config.rootonly import is_root_or_owner
from cortexd.protocol import InvalidParams
from cortexd.server import Call, Method, Param
from cortexd.server.registry import positive

if TYPE_CHECKING:
    from cortexd.runtime import Runtime
    from cortexd.store import Stores

CHUNK_BYTES = 48 * 1024
UPLOAD_CHUNK_BYTES = 32 * 1024  # base64 of this fits a 64 KiB request line with room
TRANSFER_TIMEOUT = 3600.0
_HEX = frozenset("0123456789abcdef")


def _sha256(value: str) -> str | None:
    return None if len(value) == 64 and set(value) <= _HEX else "must be 64 lowercase hex digits"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def backup_methods(service: BackupService) -> list[Method]:
    """The backup and restore methods bound to `service`."""

    async def create(call: Call) -> dict[str, Any]:
        # The host key signs archives: it goes only to root, never to an admin.
        path, manifest = await service.build("manual", include_key=is_root_or_owner(call.peer.uid))
        try:
            size = await anyio.to_thread.run_sync(os.path.getsize, path)
            digest = await anyio.to_thread.run_sync(_digest, path)
            await call.stream(
                {
                    "request_id": call.request_id,
                    "size": size,
                    "sha256": digest,
                    "files": [f["name"] for f in manifest["files"]],
                }
            )
            with open(path, "rb") as fh:  # noqa: ASYNC230 - chunks of 48 KiB from a local file
                while chunk := await anyio.to_thread.run_sync(fh.read, CHUNK_BYTES):
                    await call.stream({"chunk": base64.b64encode(chunk).decode()})
        finally:
            os.unlink(path)
        return {
            "bytes": size,
            "sha256": digest,
            "created": manifest["created"],
            "files": manifest["files"],
            "left_out": manifest["left_out"],
        }

    def begin(call: Call) -> dict[str, Any]:
        upload = service.begin_upload(call.params["size"], call.peer.uid, call.params["sha256"])
        return {"upload_id": upload.id, "chunk_bytes": UPLOAD_CHUNK_BYTES}

    async def upload(call: Call) -> dict[str, Any]:
        p = call.params
        current = service.upload(p["upload_id"], call.peer.uid)
        try:
            data = base64.b64decode(p["data"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidParams("data", "is not base64") from None
        if p["offset"] != current.received:
            raise InvalidParams("offset", f"expected {current.received}, got {p['offset']}")
        if current.received + len(data) > current.size:
            raise InvalidParams("data", f"more bytes than the announced size {current.size}")
        await anyio.to_thread.run_sync(_append, current.path, data)
        current.received += len(data)
        return {"received": current.received, "size": current.size}

    async def commit(call: Call) -> dict[str, Any]:
        current = service.upload(call.params["upload_id"], call.peer.uid)
        if current.received != current.size:
            raise InvalidParams(
                "upload_id", f"incomplete upload: {current.received} of {current.size} bytes"
            )
        digest = await anyio.to_thread.run_sync(_digest, current.path)
        if digest != current.sha256:
            service._drop(current)
            raise InvalidParams("upload_id", "the uploaded bytes do not match the sha256 given")
        return await service.restore(
            current,
            with_config=call.params["config"],
            caller_uid=call.peer.uid,
            foreign=call.params["foreign"],
        )

    def abort(call: Call) -> dict[str, Any]:
        upload = service.uploads.abort(call.params["upload_id"], call.peer.uid)
        return {"aborted": upload.id, "owner_uid": upload.uid, "received": upload.received}

    upload_id = Param("upload_id", str, required=True)
    return [
        Method(
            "backup.create",
            create,
            access="admin",
            timeout=TRANSFER_TIMEOUT,
            summary="stream a backup archive of the state databases and configuration",
        ),
        Method(
            "restore.begin",
            begin,
            params=(
                Param("size", int, required=True, check=positive),
                Param("sha256", str, required=True, check=_sha256),
            ),
            access="admin",
            inline=True,
            summary="start uploading a backup archive to restore",
        ),
        Method(
            "restore.upload",
            upload,
            params=(
                upload_id,
                Param("offset", int, required=True, check=_non_negative),
                Param("data", str, required=True),
            ),
            access="admin",
            summary="one base64 chunk of the archive being uploaded",
        ),
        Method(
            "restore.commit",
            commit,
            params=(
                upload_id,
                Param("config", bool, default=False),
                Param("foreign", bool, default=False),
            ),
            access="admin",
            timeout=TRANSFER_TIMEOUT,
            summary="verify the uploaded archive, back up the current state, swap it in",
        ),
        Method(
            "restore.abort",
            abort,
            params=(upload_id,),
            access="admin",
            inline=True,
            summary="drop an upload now (its owner or root)",
        ),
    ]


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def install(daemon: Runtime, config_targets: ConfigTargets, stores: Stores) -> BackupService:
    """Add the backup service and its methods.

    `config_targets` names the files a restore may write back (see
    `cortexd.config.restore`); `stores` the databases it copies and swaps.
    """
    service = BackupService(daemon, config_targets, stores)
    daemon.components.append(service)
    daemon.registry.add(backup_methods(service))
    return service
