"""Rebuilding an installed package's .deb, with dpkg-repack and without it.

Real dpkg and dpkg-repack on a package this machine has; nothing is installed.
"""

from __future__ import annotations

import os
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


def _dpkg_repack() -> str:
    tool = shutil.which("dpkg-repack")
    if tool is None:
        pytest.skip("dpkg-repack is not installed (the Makefile's APT_PACKAGES has it)")
    return tool


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("how", ["dpkg-repack", "rebuilt"])
def test_repack_builds_the_installed_version(tmp_path: Path, how: str) -> None:
    version, arch = _installed(PACKAGE)
    # "" turns dpkg-repack off: the built-in rebuild, as on a host without it.
    tool = _dpkg_repack() if how == "dpkg-repack" else ""
    built, source = repack(PACKAGE, version, arch, str(tmp_path), dpkg_repack=tool)
    deb = Path(built)
    assert source == how
    assert deb.name == f"{PACKAGE}_{version.replace(':', '%3a')}_{arch}.deb"
    assert sorted(p.name for p in tmp_path.iterdir()) == [deb.name], "work files left behind"
    assert _field(deb, "Package") == PACKAGE
    assert _field(deb, "Version") == version
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
    if how == "dpkg-repack":
        assert "dpkg-repack" in _field(deb, "Description")


def test_repack_prefers_dpkg_repack_when_installed(tmp_path: Path) -> None:
    tool = _dpkg_repack()
    version, arch = _installed(PACKAGE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg-repack").symlink_to(tool)
    out = tmp_path / "out"
    out.mkdir()
    path = f"{bin_dir}:{os.environ['PATH']}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", path)
        _, source = repack(PACKAGE, version, arch, str(out))
    assert source == "dpkg-repack"


def test_a_dpkg_repack_that_builds_nothing_falls_back_to_the_rebuild(tmp_path: Path) -> None:
    # dpkg-repack reports a package it could not copy with a warning and exit
    # status 0, leaving no .deb (or a broken one): that must not count.
    version, arch = _installed(PACKAGE)
    quiet_failure = tmp_path / "dpkg-repack"
    quiet_failure.write_text(
        "#!/bin/sh\necho 'dpkg-repack: warning: problems found processing x' >&2\nexit 0\n"
    )
    quiet_failure.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    built, source = repack(PACKAGE, version, arch, str(out), dpkg_repack=str(quiet_failure))
    assert source == "rebuilt"
    assert _field(Path(built), "Version") == version
