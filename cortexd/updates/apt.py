"""apt and dpkg as the update module uses them: simulate, refresh, upgrade, list.

The pending-upgrade simulation and its parser are the monitor's
(`cortexd.host.pending`), so the `apt_updates` check and `updates.check`
always agree. `updates.apt_command` replaces `apt-get` in
every command, which is how tests (and packagers with a wrapper) inject
their own. When systemd is PID 1, commands that change packages run in a
transient unit (`systemd-run --wait --pipe`), outside the daemon's sandbox.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cortexd.host.commands import CommandFailed, CommandResult
from cortexd.host.pending import APT_LISTS, Upgrade, simulate
from cortexd.host.systemd import systemd_is_pid1

DPKG_QUERY_FORMAT = "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"
APT_ARCHIVES = "/var/cache/apt/archives"
LIST_TIMEOUT = 120.0
REFRESH_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Installed:
    package: str
    version: str
    arch: str


def _run(argv: Sequence[str], timeout: float) -> CommandResult:
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return CommandResult(done.returncode, done.stdout, done.stderr)


def deb_control(path: str, timeout: float = LIST_TIMEOUT) -> dict[str, str]:
    """The control fields of the .deb at `path` ({} when dpkg-deb cannot read it).

    Read from `dpkg-deb --ctrl-tarfile`: `dpkg-deb --field` extracts the
    control files first, chowning them, which the service's sandbox refuses.
    """
    done = subprocess.run(
        ["dpkg-deb", "--ctrl-tarfile", path],
        capture_output=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        return {}
    import tarfile  # only here, when a .deb is read: not at every start

    try:
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            member = next((m for m in tar if m.name.lstrip("./") == "control"), None)
            stream = tar.extractfile(member) if member is not None else None
            text = stream.read().decode("utf-8", "replace") if stream is not None else ""
    except tarfile.TarError:
        return {}
    fields = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


class Apt:
    """The package tools, with `apt_command` standing in for `apt-get`."""

    def __init__(
        self,
        apt_command: Sequence[str] = ("apt-get",),
        *,
        lists_dir: str = APT_LISTS,
        archives_dir: str = APT_ARCHIVES,
        run: Callable[[Sequence[str], float], CommandResult] = _run,
    ) -> None:
        self.apt_command = tuple(apt_command)
        self.lists_dir = lists_dir
        self.archives_dir = archives_dir
        self.run = run

    def _apt(self, argv: Sequence[str], timeout: float) -> CommandResult:
        if argv and argv[0] == "apt-get":
            argv = [*self.apt_command, *argv[1:]]
        return self.run(argv, timeout)

    def pending(self) -> tuple[list[Upgrade], float | None, str | None]:
        """(upgrades, age of the package lists in seconds, why not) — blocking, never cached."""
        found = simulate(self.run, self.lists_dir, self.apt_command)
        return list(found.upgrades), found.lists_age, found.problem

    def refresh(self) -> CommandResult:
        """`apt-get update` (downloads the package lists)."""
        return self._apt(["apt-get", "-q", "update"], REFRESH_TIMEOUT)

    def installed(self) -> list[Installed]:
        """Every installed package with its version (dpkg-query)."""
        done = self.run(["dpkg-query", "-W", "-f", DPKG_QUERY_FORMAT], LIST_TIMEOUT)
        if done.returncode != 0:
            raise CommandFailed.of("dpkg-query", done)
        out = []
        for line in done.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[3].startswith("ii"):
                out.append(Installed(parts[0], parts[1], parts[2]))
        return out

    def cached_deb(self, item: Installed) -> str | None:
        """The .deb of exactly this version in apt's cache, if it is still there."""
        version = item.version.replace(":", "%3a")
        name = item.package.split(":")[0]
        for arch in (item.arch, "all"):
            path = os.path.join(self.archives_dir, f"{name}_{version}_{arch}.deb")
            if os.path.isfile(path):
                return path
        return None

    def upgrade_command(self, packages: Sequence[str], *, simulate: bool) -> list[str]:
        """The apt command upgrading `packages` (simulated unless `simulate` is False)."""
        argv = [
            *self.apt_command,
            "-q",
            "-s" if simulate else "-y",
            "-o",
            "Dpkg::Options::=--force-confold",
            "install",
            "--only-upgrade",
            *packages,
        ]
        if not simulate and systemd_is_pid1():
            return ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--", *argv]
        return argv

    def reinstall_command(self, debs: Sequence[str], *, simulate: bool) -> list[str]:
        """The apt command installing saved .deb files (downgrades allowed)."""
        argv = [
            *self.apt_command,
            "-q",
            "-s" if simulate else "-y",
            "--allow-downgrades",
            "install",
            *debs,
        ]
        if not simulate and systemd_is_pid1():
            return ["systemd-run", "--wait", "--pipe", "--quiet", "--collect", "--", *argv]
        return argv
