"""Rebuild the .deb of an installed package from the files on disk.

Used when apt's cache no longer holds the installed version, so a snapshot can
still carry it for an offline rollback. `dpkg-repack` does it when installed
(it knows diversions and obsolete conffiles); where systemd is PID 1 it runs
in a transient unit, because the daemon's sandbox forbids the chown it needs.
Its result is accepted only if dpkg-deb reads the package and version asked
for; otherwise, and without it, the built-in rebuild below does the same work:
the control file is dpkg's record of the package without its installation
status; the payload is every file the package installed (its `.list`), with
owners and modes as they are now, so locally edited configuration files are
captured as edited — which is what a rollback should put back. Maintainer
scripts, conffiles and md5sums come from dpkg's database. Kept .debs are
compressed for speed (gzip -1): a package with a model in it is hundreds of
megabytes. Blocking; runs in a worker thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence

from cortexd.host.commands import CommandFailed
from cortexd.host.systemd import systemd_is_pid1
from cortexd.updates.apt import deb_control

log = logging.getLogger(__name__)

DPKG_INFO = "/var/lib/dpkg/info"
COMPRESSION = ("-Zgzip", "-z1")
SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config", "templates")
DROPPED_FIELDS = ("Status", "Conffiles", "Config-Version")
BUILD_TIMEOUT = 300.0


def _info_file(info_dir: str, package: str, arch: str, suffix: str) -> str | None:
    for name in (f"{package}:{arch}.{suffix}", f"{package}.{suffix}"):
        path = os.path.join(info_dir, name)
        if os.path.exists(path):
            return path
    return None


def control_text(status: str) -> str:
    """`dpkg-query -s` output as a control file: no status, no conffile list."""
    out: list[str] = []
    skipping = False
    for line in status.splitlines():
        if line.startswith((" ", "\t")):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(":", 1)[0] in DROPPED_FIELDS
        if not skipping and line.strip():
            out.append(line)
    return "\n".join(out) + "\n"


def _copy_entry(source: str, root: str) -> None:
    target = os.path.join(root, source.lstrip("/"))
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return  # removed by hand (or diverted): nothing to carry
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(source), target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(source, target)
        else:
            return
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    # The copy is the daemon's: root's under the service. Only other owners
    # need a chown, which the service's sandbox refuses (the rebuild then fails).
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        os.lchown(target, st.st_uid, st.st_gid)


def with_dpkg_repack(
    package: str, version: str, arch: str, target_dir: str, tool: str
) -> str | None:
    """The .deb `tool` (dpkg-repack) builds in `target_dir`, or None if it did not."""
    name = f"{package}:{arch}" if arch != "all" else package
    with tempfile.TemporaryDirectory(prefix="dpkg-repack-", dir=target_dir) as work:
        argv: Sequence[str] = [tool, *(f"--deb-option={o}" for o in COMPRESSION), name]
        if systemd_is_pid1():
            argv = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                    f"--working-directory={work}", "--", *argv]  # fmt: skip
        try:
            done = subprocess.run(
                list(argv),
                cwd=work,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("dpkg-repack %s: %s", name, exc)
            return None
        built = [f for f in os.listdir(work) if f.endswith(".deb")]
        # dpkg-repack reports a package it could not copy with a warning and exit 0.
        control = deb_control(os.path.join(work, built[0])) if built else {}
        fields = {k: control.get(k) for k in ("Package", "Version")}
        if done.returncode != 0 or fields != {"Package": package, "Version": version}:
            log.warning(
                "dpkg-repack %s did not build %s %s (exit %d, found %s): %s",
                name, package, version, done.returncode, fields or built,
                (done.stderr or done.stdout).strip()[-300:],
            )  # fmt: skip
            return None
        output = os.path.join(target_dir, f"{package}_{version.replace(':', '%3a')}_{arch}.deb")
        os.replace(os.path.join(work, built[0]), output)
        return output


def repack(
    package: str,
    version: str,
    arch: str,
    target_dir: str,
    *,
    info_dir: str = DPKG_INFO,
    dpkg_repack: str | None = None,
) -> tuple[str, str]:
    """Build `<package>_<version>_<arch>.deb` in `target_dir`; (its path, how).

    `how` is `dpkg-repack` or `rebuilt`. `dpkg_repack` names the tool; by
    default it is looked up on PATH, and "" means do not use it.

    Raises:
        CommandFailed: dpkg has no record of the package, or dpkg-deb failed.
    """
    tool = shutil.which("dpkg-repack") if dpkg_repack is None else dpkg_repack
    if tool:
        built = with_dpkg_repack(package, version, arch, target_dir, tool)
        if built is not None:
            return built, "dpkg-repack"
    return rebuild(package, version, arch, target_dir, info_dir=info_dir), "rebuilt"


def rebuild(
    package: str, version: str, arch: str, target_dir: str, *, info_dir: str = DPKG_INFO
) -> str:
    """The built-in rebuild: `<package>_<version>_<arch>.deb` in `target_dir`; its path.

    Raises:
        CommandFailed: dpkg has no record of the package, or dpkg-deb failed.
    """
    status = subprocess.run(
        ["dpkg-query", "-s", f"{package}:{arch}" if arch != "all" else package],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if status.returncode != 0:
        raise CommandFailed(
            f"dpkg knows no package {package}: {status.stderr.strip()[:200]}",
            program="dpkg-query",
            returncode=status.returncode,
        )
    listing = _info_file(info_dir, package, arch, "list")
    if listing is None:
        raise CommandFailed(f"no file list for {package} in {info_dir}", program="dpkg-deb")
    with tempfile.TemporaryDirectory(prefix="repack-", dir=target_dir) as root:
        os.chmod(root, 0o755)
        control_dir = os.path.join(root, "DEBIAN")
        os.makedirs(control_dir, mode=0o755)
        with open(os.path.join(control_dir, "control"), "w", encoding="utf-8") as fh:
            fh.write(control_text(status.stdout))
        for suffix in (*SCRIPTS, "conffiles", "md5sums", "shlibs", "triggers"):
            found = _info_file(info_dir, package, arch, suffix)
            if found:
                dest = os.path.join(control_dir, suffix)
                shutil.copyfile(found, dest)
                os.chmod(dest, 0o755 if suffix in SCRIPTS[:5] else 0o644)
        with open(listing, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                path = line.rstrip("\n")
                if path and path != "/.":
                    _copy_entry(path, root)
        name = f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
        output = os.path.join(target_dir, name)
        built = subprocess.run(
            ["dpkg-deb", *COMPRESSION, "--build", root, output],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        if built.returncode != 0:
            raise CommandFailed(
                f"dpkg-deb failed: {built.stderr.strip()[:300]}",
                program="dpkg-deb",
                returncode=built.returncode,
            )
    return output
