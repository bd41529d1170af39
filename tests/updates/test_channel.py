"""The release manifest and its .debs: read from a file and from an https server on
127.0.0.1 with its own CA, every bad input refused with the entry and field named."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cortexd.protocol import Unavailable
from cortexd.updates import channel
from cortexd.updates.channel import ChecksumMismatch, ManifestError
from tests.updates.releases import (
    HttpsServer,
    entry,
    fake_deb,
    https_server,
    self_signed,
    sha256,
    write_manifest,
)

SHA = "a" * 64


def releases(text: str, base: str = "file:///srv/releases.json") -> list[channel.Release]:
    return channel.parse_manifest(text.encode(), base)


def test_a_manifest_resolves_relative_urls_and_the_newest_is_dpkg_s_newest() -> None:
    found = releases(
        json.dumps(
            {
                "versions": [
                    {"version": "0.2.0~rc1", "url": "cortexd_0.2.0~rc1_amd64.deb", "sha256": SHA},
                    {"version": "0.2.0", "url": "sub/cortexd_0.2.0_amd64.deb", "sha256": SHA},
                    {"version": "0.10.0", "url": "x.deb", "sha256": SHA, "architecture": "arm64"},
                    {"version": "0.1.9", "url": "https://mirror.example.org/y.deb", "sha256": SHA},
                ],
                "channel": "stable",
            }
        )
    )
    assert [r.url for r in found][:2] == [
        "file:///srv/cortexd_0.2.0~rc1_amd64.deb",
        "file:///srv/sub/cortexd_0.2.0_amd64.deb",
    ]
    best = channel.newest(found, "amd64")
    assert best is not None and best.version == "0.2.0"
    arm = channel.newest(found, "arm64")
    assert arm is not None and arm.version == "0.10.0"
    assert channel.newest([], "amd64") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[]", "expected an object with a `versions` list"),
        ('{"versions": {}}', "expected an object with a `versions` list"),
        ('{"versions": [7]}', "versions[0]: expected an object"),
        ('{"versions": [{"url": "a.deb", "sha256": "' + SHA + '"}]}', "versions[0].version"),
        (
            '{"versions": [{"version": "v2", "url": "a.deb", "sha256": "' + SHA + '"}]}',
            "versions[0].version: not a Debian version: 'v2'",
        ),
        (
            '{"versions": [{"version": "1.0", "url": "a.deb", "sha256": "abc"}]}',
            "versions[0].sha256: expected 64 hexadecimal digits, got 'abc'",
        ),
        (
            '{"versions": [{"version": "1.0", "sha256": "' + SHA + '"}]}',
            "versions[0].url: expected a non-empty string",
        ),
        (
            '{"versions": [{"version": "1.0", "url": "http://h/a.deb", "sha256": "' + SHA + '"}]}',
            "versions[0].url: must be file or https, got 'http://h/a.deb'",
        ),
        (
            '{"versions": [{"version": "1.0", "url": "a.deb", "sha256": "'
            + SHA
            + '", "security": "yes"}]}',
            "versions[0].security: expected true or false",
        ),
        (
            '{"versions": [{"version": "1.0", "url": "a.deb", "sha256": "'
            + SHA
            + '", "architecture": "AMD 64"}]}',
            "versions[0].architecture: not an architecture name",
        ),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_entry_and_field(text: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        releases(text)
    assert problem in caught.value.message
    assert caught.value.message.startswith("release manifest file:///srv/releases.json: ")


def test_an_https_manifest_may_name_only_https_files() -> None:
    text = json.dumps({"versions": [{"version": "1.0", "url": "file:///a.deb", "sha256": SHA}]})
    with pytest.raises(ManifestError) as caught:
        releases(text, "https://releases.example.org/cortexd/releases.json")
    assert "versions[0].url: must be https, got 'file:///a.deb'" in caught.value.message


def test_credentials_never_appear_in_what_is_shown() -> None:
    shown = channel.shown("https://user:s3cret@releases.example.org:8443/r.json?token=t0k")
    assert shown == "https://releases.example.org:8443/r.json"


def test_a_manifest_too_large_or_missing_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(" " * (channel.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="larger than"):
        channel.fetch_manifest(f"file://{big}", "")
    with pytest.raises(Unavailable, match="no such file"):
        channel.fetch_manifest(f"file://{tmp_path}/missing.json", "")


# -- over https ----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpsServer, Path, Path]]:
    """A directory of releases behind https on 127.0.0.1; (server, its CA file, the directory)."""
    site = tmp_path / "site"
    site.mkdir()
    cert, key = self_signed(tmp_path)
    with https_server(site, cert, key) as server:
        yield server, cert, site


def test_an_https_manifest_is_read_with_the_configured_ca(
    served: tuple[HttpsServer, Path, Path],
) -> None:
    server, ca, site = served
    deb = fake_deb(site, "0.2.0")
    write_manifest(site, [entry(deb, "0.2.0")])
    (found,) = channel.fetch_manifest(server.url("releases.json"), str(ca))
    assert found.url == server.url(deb.name)
    path = channel.download(found, str(site.parent / "downloads"), str(ca))
    assert Path(path).name == "cortexd_0.2.0_amd64.deb"
    assert sha256(Path(path)) == sha256(deb)


def test_an_untrusted_server_is_refused_with_a_hint(
    served: tuple[HttpsServer, Path, Path],
) -> None:
    server, _, site = served
    write_manifest(site, [])
    with pytest.raises(Unavailable) as caught:
        channel.fetch_manifest(server.url("releases.json"), "")
    assert "certificate is not trusted" in caught.value.message
    assert "updates.ca_file" in caught.value.message


def test_a_missing_manifest_says_http_404(served: tuple[HttpsServer, Path, Path]) -> None:
    server, ca, _ = served
    with pytest.raises(Unavailable, match="HTTP 404"):
        channel.fetch_manifest(server.url("nothing.json"), str(ca))


def test_a_redirect_down_to_http_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/releases.json")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/releases.json"
        with pytest.raises(Unavailable, match="not https"):
            channel.fetch_manifest(url, str(cert))
    finally:
        server.shutdown()
        server.server_close()


# -- downloads -----------------------------------------------------------------------------


def test_a_download_with_the_wrong_digest_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    deb = fake_deb(tmp_path, "0.2.0")
    release = channel.Release("0.2.0", f"file://{deb}", "0" * 64, "amd64", None, False, "")
    downloads = tmp_path / "downloads"
    with pytest.raises(ChecksumMismatch) as caught:
        channel.download(release, str(downloads), "")
    assert "refused, nothing was changed" in caught.value.message
    assert caught.value.data["actual"] == sha256(deb)
    assert list(downloads.iterdir()) == []


def test_a_download_that_is_another_package_or_version_is_refused(tmp_path: Path) -> None:
    # The digest matches the file, but the file is not what the manifest says it is.
    deb = fake_deb(tmp_path, "0.3.0")
    release = channel.Release("0.2.0", f"file://{deb}", sha256(deb), "amd64", None, False, "")
    downloads = tmp_path / "downloads"
    with pytest.raises(ChecksumMismatch) as caught:
        channel.download(release, str(downloads), "")
    assert "not the cortexd 0.2.0 .deb" in caught.value.message
    assert "'Version': '0.3.0'" in caught.value.message
    assert list(downloads.iterdir()) == []
    not_a_deb = tmp_path / "cortexd_0.2.0_amd64.deb.txt"
    not_a_deb.write_text("hello")
    release = channel.Release(
        "0.2.0", f"file://{not_a_deb}", sha256(not_a_deb), None, None, False, ""
    )
    with pytest.raises(ChecksumMismatch, match="dpkg-deb cannot read it"):
        channel.download(release, str(downloads), "")
