"""The host key: what tells this daemon's own backup archives from anyone else's.

32 random bytes in `<state_dir>/host.key` (mode 0600, owned by the daemon's
user), created on first start. Each archive's manifest carries an
HMAC-SHA256 over its canonical JSON with this key, and the key's id. A
checksum alone proves nothing — anyone can recompute one after editing the
archive — but only the daemon (and root) can read the key, so only archives
this daemon wrote verify. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from typing import Any

import orjson

from cortexd.host.files import atomic_write

KEY_FILE = "host.key"
KEY_BYTES = 32
_ID_CONTEXT = b"cortex host key id\0"


class HostKeyError(Exception):
    """The key file exists but cannot be trusted or read; the message says why."""


def load_or_create(state_dir: str) -> bytes:
    """The host key, created (0600) if there is none yet. Blocking.

    Raises:
        HostKeyError: the file is not a regular file of the daemon's user, is
            readable by others, or does not hold exactly 32 bytes.
        OSError: the state directory cannot be read or written.
    """
    path = os.path.join(state_dir, KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return _create(state_dir, path)
    except OSError as exc:
        raise HostKeyError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise HostKeyError(f"{path}: not a regular file owned by uid {os.geteuid()}")
        if st.st_mode & 0o077:
            raise HostKeyError(
                f"{path}: readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "anyone who read it can forge archives: remove it to make a new one"
            )
        key = fh.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise HostKeyError(f"{path}: holds {len(key)} bytes, not {KEY_BYTES}")
    return key


def _create(state_dir: str, path: str) -> bytes:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    install(path, key)
    return key


def install(path: str, key: bytes) -> None:
    """Write `key` to `path` (0600) through a new file and a rename. Blocking."""
    atomic_write(path, key)


def key_id(key: bytes) -> str:
    """A short public name of the key (which key signed an archive), not the key."""
    return hashlib.sha256(_ID_CONTEXT + key).hexdigest()[:16]


def sign(key: bytes, manifest: dict[str, Any]) -> str:
    """The HMAC-SHA256 of the manifest without its `signature`, as hex."""
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    body = orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signed_by(key: bytes | None, manifest: dict[str, Any]) -> bool:
    """Whether `manifest` carries a valid signature made with `key`."""
    signature = manifest.get("signature")
    if key is None or not isinstance(signature, str):
        return False
    return hmac.compare_digest(signature, sign(key, manifest))
