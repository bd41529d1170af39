"""A release channel for tests: small real cortexd .debs, manifests, a local HTTPS server.

The .debs are built with the real dpkg-deb and carry one file; they are only
ever simulated (`apt-get -s`) or refused outside the systemd trial, never
installed on the host.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT = 60.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_deb(directory: Path, version: str, arch: str = "amd64") -> Path:
    """A real, tiny `cortexd` .deb of `version` (one file under /usr/share/doc)."""
    root = directory / f"build-{version}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr/share/doc/cortexd"
    doc.mkdir(parents=True)
    (doc / "VERSION").write_text(version + "\n")
    (root / "DEBIAN/control").write_text(
        f"Package: cortexd\nVersion: {version}\nArchitecture: {arch}\n"
        "Maintainer: tests <tests@example.org>\nDescription: a stand-in for tests\n"
    )
    deb = directory / f"cortexd_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )
    return deb


def entry(deb: Path, version: str, **extra: Any) -> dict[str, Any]:
    """A manifest entry for `deb` (its name relative to the manifest, its real digest)."""
    return {"version": version, "url": deb.name, "sha256": sha256(deb), **extra}


def write_manifest(directory: Path, entries: list[dict[str, Any]]) -> Path:
    path = directory / "releases.json"
    path.write_text(json.dumps({"versions": entries}, indent=1))
    return path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT,
    )
    return cert, key


@dataclass
class HttpsServer:
    port: int
    requests: list[str]

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def https_server(root: Path, cert: Path, key: Path) -> Iterator[HttpsServer]:
    """Serve `root` over TLS on 127.0.0.1 (an ephemeral port) in a thread."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpsServer(server.server_address[1], requests)
    finally:
        server.shutdown()
        server.server_close()
