"""Replacing a file so a reader sees the old or the new content, never a part of either."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets

from cortexd.config.schema import Config

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
READ_CHUNK = 1 << 20


def atomic_write(path: str, data: bytes, *, mode: int = PRIVATE_MODE) -> None:
    """Replace `path` with `data`: a new file beside it, fsync, rename, fsync the directory.

    The temporary file is created exclusively and never through a link, with a
    name that starts with a dot and ends in random hex, so a reader matching
    on a suffix (node_exporter's `*.prom`) never picks it up. `mode` is set
    on the file whatever the umask. Blocking: call it from a worker thread.

    Raises:
        OSError: the directory is missing or not writable, or the disk is full;
            the old file is then unchanged and no temporary file is left.
    """
    directory, name = os.path.split(path)
    directory = directory or "."
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename is durable only once the directory entry is on disk too.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def cortex_roots(config: Config) -> list[str]:
    """The daemon's own config, state and runtime directories (under `repair.root` in tests)."""
    return [config.repair.config_dir, config.state_dir, config.repair.runtime_dir]


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_names(path: str) -> list[str]:
    """The names in the directory `path`; none when it is missing or unreadable."""
    try:
        return os.listdir(path)
    except OSError:
        return []
