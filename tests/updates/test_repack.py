"""Rebuilding an installed package's .deb from the files on disk (real dpkg, nothing installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cortexd.updates.repack import control_text, repack

PACKAGE = "netbase"  # small, Priority: important, with conffiles and maintainer scripts


def _installed(package: str) -> tuple[str, str]:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}\t${Architecture}", package],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or shutil.which("dpkg-deb") is None:
        pytest.skip(f"{package} is not installed here")
    version, arch = done.stdout.split("\t")
    return version, arch


def test_control_text_drops_the_install_status() -> None:
    status = (
        "Package: x\nStatus: install ok installed\nVersion: 1\n"
        "Conffiles:\n /etc/x 0123\nDescription: a thing\n more text\n"
    )
    assert control_text(status) == "Package: x\nVersion: 1\nDescription: a thing\n more text\n"


def test_repack_builds_the_installed_version(tmp_path: Path) -> None:
    version, arch = _installed(PACKAGE)
    deb = Path(repack(PACKAGE, version, arch, str(tmp_path)))
    assert deb.name == f"{PACKAGE}_{version.replace(':', '%3a')}_{arch}.deb"

    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert field("Package") == PACKAGE
    assert field("Version") == version
    listed = subprocess.run(
        ["dpkg-query", "-L", PACKAGE], capture_output=True, text=True, check=True
    ).stdout.split()
    contents = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    files = [p for p in listed if Path(p).is_file() and not Path(p).is_symlink()]
    assert files
    for path in files:
        assert f".{path}" in contents
    control = subprocess.run(
        ["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    assert "postinst" in control
    assert "Status:" not in control
