"""Binding the listening socket: stale files, live daemons, modes and groups.

Runs before the daemon serves, in a worker thread, so the connect probe to an
existing socket (bounded by a timeout) never stalls the loop.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import resource
import socket
import stat
from dataclasses import dataclass

import anyio
from anyio.abc import SocketStream
from anyio.streams.stapled import MultiListener

from cortexd.config import ServerConfig
from cortexd.protocol import CortexError

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
PROBE_TIMEOUT = 1.0
LISTEN_BACKLOG = 1024
# Descriptors the daemon needs beyond its connections: state files, the
# journal, subprocess pipes, the model file.
FD_HEADROOM = 256


class SocketInUse(CortexError):
    """Another daemon answers on the socket path."""


class SocketPathUnsafe(CortexError):
    """The socket path or its directory is not safe to use."""


@dataclass(slots=True)
class BoundSocket:
    sock: socket.socket
    path: str
    created: bool  # we made the file, so we remove it on exit
    inode: int = 0  # which file we made: another daemon may have replaced it since


def bind_socket(config: ServerConfig) -> BoundSocket:
    """Create, bind and listen on the configured path.

    Raises:
        SocketInUse: a live daemon answers on the path.
        SocketPathUnsafe: the path exists and is not a socket, or its private
            directory is not ours.
    """
    path = config.socket_path
    _ensure_parent(path)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the file is born 0600; widened after the chown
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        _set_group(path, config.socket_group)
        os.chmod(path, SOCKET_MODE)
        sock.listen(min(LISTEN_BACKLOG, config.max_connections))
    except OSError:
        sock.close()
        os.unlink(path)
        raise
    return BoundSocket(sock=sock, path=path, created=True, inode=os.lstat(path).st_ino)


async def bind_tcp(host: str, port: int) -> MultiListener[SocketStream]:
    """A listening TCP socket on `host:port` (every address `host` names).

    Raises:
        OSError: the port is taken or the address is not this host's.
    """
    return await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(path) or "."
    if os.path.isdir(parent):
        if parent.startswith("/tmp/cortex-"):
            _check_private_dir(parent)
        return
    # A directory we create is private unless it is the system runtime dir.
    os.makedirs(parent, mode=0o700 if parent.startswith("/tmp/") else 0o755, exist_ok=True)
    if parent.startswith("/tmp/cortex-"):
        _check_private_dir(parent)


def _check_private_dir(parent: str) -> None:
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SocketPathUnsafe(
            f"{parent} must be a directory owned by uid {os.getuid()} and not writable by others",
            path=parent,
        )


def _clear_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathUnsafe(f"{path} exists and is not a socket; not replacing it", path=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError:
        # Something holds the socket but does not accept: still not ours to take.
        raise SocketInUse(f"{path} is held by a process that does not answer", path=path) from None
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # backlog full: a live but busy daemon
            raise SocketInUse(f"a daemon is already serving on {path}", path=path) from None
        raise
    finally:
        probe.close()
    raise SocketInUse(f"a daemon is already serving on {path}", path=path)


def _set_group(path: str, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning(
            "socket group %r does not exist; %s keeps the daemon's group (run `make install`"
            " or `groupadd %s`)",
            group,
            path,
            group,
        )
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning("cannot give %s to group %r; it keeps the daemon's group", path, group)


def remove_socket(bound: BoundSocket) -> None:
    """Remove the socket file if we created it and it is still the one we bound."""
    if not bound.created:
        return
    try:
        if bound.inode and os.lstat(bound.path).st_ino != bound.inode:
            log.info("%s now belongs to another process; leaving it", bound.path)
            return
        os.unlink(bound.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", bound.path, exc)


def raise_fd_limit(max_connections: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to fit `max_connections`; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_HEADROOM
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    if soft < max_connections + FD_HEADROOM:
        log.warning(
            "file descriptor limit %d is below max_connections %d plus headroom; raise LimitNOFILE",
            soft,
            max_connections,
        )
    return soft, hard
