"""The cortexd release channel: a manifest of released .deb files, read and checked.

`updates.channel` names the manifest: `file:///path/releases.json` (or a bare
absolute path) or `https://host/releases.json`, verified against the system's
CA store or `updates.ca_file`. The manifest is JSON:

    {"versions": [{"version": "0.2.0", "url": "cortexd_0.2.0_amd64.deb",
                   "sha256": "<64 hex digits>", "architecture": "amd64",
                   "released": "2026-12-01", "security": false, "notes": "…"}]}

`url` may be relative to the manifest; an https manifest may name only https
files, a local one local or https files. Every problem names the entry and
field (`versions[1].sha256: …`). A downloaded .deb is accepted only when its
SHA-256 is the manifest's and its control fields name cortexd at that version
and architecture. All of it blocks and runs in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cortexd.protocol import Unavailable
from cortexd.updates import debversion
from cortexd.updates.apt import deb_control

PACKAGE = "cortexd"
MAX_MANIFEST_BYTES = 1 << 20
MAX_VERSIONS = 1000
MAX_DEB_BYTES = 4 << 30
CHUNK = 1 << 20
FETCH_TIMEOUT = 60.0
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_ARCH = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_SCHEMES = ("file", "https")


class ManifestError(Unavailable):
    """The release manifest cannot be used; the message names the entry and field."""


class ChecksumMismatch(Unavailable):
    """A downloaded .deb is not the file the manifest describes."""


@dataclass(frozen=True, slots=True)
class Release:
    """One version the manifest offers."""

    version: str
    url: str
    sha256: str
    architecture: str | None
    released: str | None
    security: bool
    notes: str

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "url": shown(self.url),
            "sha256": self.sha256,
            "architecture": self.architecture,
            "released": self.released,
            "security": self.security,
            "notes": self.notes,
        }


def shown(url: str) -> str:
    """`url` without user, password or query: what may appear in answers and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def channel_url(value: str) -> str:
    """The channel as a URL: a bare absolute path becomes `file://`."""
    return f"file://{value}" if value.startswith("/") else value


# -- reading the manifest ---------------------------------------------------------------


def parse_manifest(text: bytes, base_url: str) -> list[Release]:
    """The releases of a manifest, relative URLs resolved against `base_url`.

    Raises:
        ManifestError: not JSON, or an entry or field is wrong (the message names it).
    """
    where = shown(base_url)
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"release manifest {where}: not JSON: {exc}", url=where) from None
    if not isinstance(data, dict) or not isinstance(data.get("versions"), list):
        raise ManifestError(
            f"release manifest {where}: expected an object with a `versions` list", url=where
        )
    entries = data["versions"]
    if len(entries) > MAX_VERSIONS:
        raise ManifestError(
            f"release manifest {where}: more than {MAX_VERSIONS} versions", url=where
        )
    return [_release(entry, f"versions[{n}]", base_url) for n, entry in enumerate(entries)]


def _release(entry: Any, path: str, base_url: str) -> Release:
    where = shown(base_url)

    def bad(field: str, problem: str) -> ManifestError:
        return ManifestError(
            f"release manifest {where}: {path}.{field}: {problem}", url=where, entry=path
        )

    if not isinstance(entry, dict):
        raise ManifestError(f"release manifest {where}: {path}: expected an object", url=where)

    def text(field: str, *, required: bool) -> str | None:
        value = entry.get(field)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise bad(field, f"expected a non-empty string, got {value!r}")
        return value

    version = text("version", required=True)
    assert version is not None
    if not debversion.valid(version):
        raise bad("version", f"not a Debian version: {version!r}")
    sha = text("sha256", required=True)
    assert sha is not None
    if not _SHA256.match(sha):
        raise bad("sha256", f"expected 64 hexadecimal digits, got {sha!r}")
    arch = text("architecture", required=False)
    if arch is not None and not _ARCH.match(arch):
        raise bad("architecture", f"not an architecture name: {arch!r}")
    security = entry.get("security", False)
    if not isinstance(security, bool):
        raise bad("security", f"expected true or false, got {security!r}")
    notes = entry.get("notes", "")
    if not isinstance(notes, str):
        raise bad("notes", f"expected a string, got {notes!r}")
    raw_url = text("url", required=True)
    assert raw_url is not None
    url = urllib.parse.urljoin(base_url, raw_url)
    scheme = urllib.parse.urlsplit(url).scheme
    allowed = ("https",) if urllib.parse.urlsplit(base_url).scheme == "https" else _SCHEMES
    if scheme not in allowed:
        raise bad("url", f"must be {' or '.join(allowed)}, got {shown(url)!r}")
    return Release(
        version=version,
        url=url,
        sha256=sha.lower(),
        architecture=arch,
        released=text("released", required=False),
        security=security,
        notes=notes,
    )


def newest(releases: list[Release], architecture: str) -> Release | None:
    """The highest version built for `architecture` (or for any)."""
    fitting = [r for r in releases if r.architecture in (None, "all", architecture)]
    return max(fitting, key=lambda r: debversion.sort_key(r.version), default=None)


# -- transport --------------------------------------------------------------------------


def _https_redirects_only() -> Any:
    """A redirect handler that follows only to another https URL: never down to plain http.

    Built on first use: urllib.request (with http.client and the email
    package) loads only when a channel is read over https.
    """
    import urllib.error
    from urllib.request import HTTPRedirectHandler

    class HttpsRedirectsOnly(HTTPRedirectHandler):
        def redirect_request(
            self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
        ) -> Any:
            if urllib.parse.urlsplit(newurl).scheme != "https":
                raise urllib.error.HTTPError(
                    newurl, code, f"redirect to {shown(newurl)} refused: not https", headers, fp
                )
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return HttpsRedirectsOnly()


def _open(url: str, ca_file: str, timeout: float) -> Any:
    """A readable response for `url` (file or https).

    Raises:
        Unavailable: cannot be opened; the message says why and what to do.
    """
    # Imported when a channel is read (in a worker thread): urllib.error
    # brings urllib.response and tempfile, which the idle daemon never uses.
    import urllib.error

    where = shown(url)
    parts = urllib.parse.urlsplit(url)
    try:
        if parts.scheme == "file":
            return open(urllib.parse.unquote(parts.path), "rb")
        from urllib.request import HTTPSHandler, build_opener

        context = ssl.create_default_context(cafile=ca_file or None)
        opener = build_opener(HTTPSHandler(context=context), _https_redirects_only())
        return opener.open(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"{where}: HTTP {exc.code} {exc.reason}", url=where) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = "" if ca_file else " (name the CA that signed it in updates.ca_file)"
            raise Unavailable(
                f"{where}: the server's certificate is not trusted: {reason.verify_message}{hint}",
                url=where,
            ) from None
        raise Unavailable(f"{where}: {reason}", url=where) from None
    except FileNotFoundError:
        raise Unavailable(f"{where}: no such file", url=where) from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise Unavailable(f"{where}: {exc}", url=where) from None


def fetch_manifest(url: str, ca_file: str, timeout: float = FETCH_TIMEOUT) -> list[Release]:
    """Read and check the manifest at `url` (blocking).

    Raises:
        Unavailable: it cannot be read.
        ManifestError: it is not a valid manifest.
    """
    with _open(url, ca_file, timeout) as response:
        try:
            data = response.read(MAX_MANIFEST_BYTES + 1)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"{shown(url)}: {exc}", url=shown(url)) from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"release manifest {shown(url)}: larger than {MAX_MANIFEST_BYTES} bytes",
            url=shown(url),
        )
    return parse_manifest(data, url)


def download(
    release: Release, target_dir: str, ca_file: str, timeout: float = FETCH_TIMEOUT
) -> str:
    """Fetch `release`'s .deb into `target_dir` and check it; returns its path (blocking).

    Nothing is left behind when the file is refused.

    Raises:
        Unavailable: it cannot be downloaded.
        ChecksumMismatch: its SHA-256, or its control fields, are not what the
            manifest says.
    """
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    partial = os.path.join(target_dir, f".{PACKAGE}-download.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with _open(release.url, ca_file, timeout) as response, open(partial, "wb") as out:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > MAX_DEB_BYTES:
                    raise Unavailable(
                        f"{shown(release.url)}: larger than {MAX_DEB_BYTES} bytes",
                        url=shown(release.url),
                    )
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != release.sha256:
            raise ChecksumMismatch(
                f"{shown(release.url)}: SHA-256 {actual} is not the manifest's {release.sha256};"
                " refused, nothing was changed",
                url=shown(release.url),
                expected=release.sha256,
                actual=actual,
            )
        arch = _check_control(partial, release)
        final = os.path.join(target_dir, deb_name(release.version, arch))
        os.replace(partial, final)
    except BaseException:
        _remove(partial)
        raise
    return final


def deb_name(version: str, arch: str) -> str:
    """The file name apt and dpkg-repack give the .deb of `version` (an epoch's `:` quoted)."""
    return f"{PACKAGE}_{version.replace(':', '%3a')}_{arch}.deb"


def _check_control(path: str, release: Release) -> str:
    """The .deb must say it is cortexd at the manifest's version (and architecture).

    Returns its architecture.
    """
    fields = deb_control(path, FETCH_TIMEOUT)
    expected = {"Package": PACKAGE, "Version": release.version}
    if release.architecture:
        expected["Architecture"] = release.architecture
    wrong = {k: fields.get(k) for k, v in expected.items() if fields.get(k) != v}
    if not fields or wrong:
        found = f"it says {wrong}" if fields else "dpkg-deb cannot read it"
        raise ChecksumMismatch(
            f"{shown(release.url)}: not the {PACKAGE} {release.version} .deb the manifest"
            f" describes: {found}; refused, nothing was changed",
            url=shown(release.url),
        )
    return fields.get("Architecture", "all")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
