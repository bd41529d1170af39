"""The Debian package: what `make deb` builds, lintian's verdict, and its life under systemd.

The .deb is built once for this module by packaging/deb/build.sh (what `make
deb` runs), from this checkout. Higher versions are the same package
repacked with dpkg-deb under another Version (and, for the release that
cannot start, a cortexd entry point that exits 1).

The life-cycle tests run in the systemd trial of tests/test_systemd_units.py:
systemd 252 as PID 1 of fresh namespaces, with /etc, /var, /usr and /opt as
overlays and /run and /tmp private, so dpkg's database, /opt/cortexd, the
units and everything else the package touches stay inside. Its network
namespace has no route out, so `apt install ./cortexd_*.deb` working there
shows the package needs no download. No cortexd units are preinstalled: the
package brings them, and its postinst creates the groups.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_systemd_units import (
    INNER_BOOT,
    INNER_MOUNTS,
    NOBODY,
    Trial,
    _trial_unavailable,
    _write_trial_files,
)

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "packaging" / "deb" / "build.sh"
PACKAGING_MD = REPO / "docs" / "packaging.md"
PYTHON = Path("/usr/bin/python3.11")
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_TIMEOUT = 900.0
APT_TIMEOUT = 600.0
WAIT = 120.0
# The first test to use the package builds it (about a minute, more on a busy machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# Where the trial keeps the debs it installs and the channel it serves: under
# /var (an overlay), where the service's sandbox can read.
RELEASES = "/var/cache/cortex-trial"

# The package trial: the mounts of the source-tree trial, then a clean slate
# for the package (all inside the overlays). Whatever the host has of cortex
# stays out of sight; a policy-rc.d that forbids starting services (container
# images ship one) goes, so the maintainer scripts act as on a booted host;
# man-db's trigger (a minute of mandb on a slow machine) is skipped the way
# man-db itself allows, by removing its auto-update flag.
INNER_PACKAGE = r"""
rm -rf /etc/cortex /var/lib/cortex /opt/cortexd /etc/default/cortexd
rm -f /usr/sbin/policy-rc.d /var/lib/man-db/auto-update
mkdir -p /var/cache/cortex-trial
mv /run/trial/debs/*.deb /var/cache/cortex-trial/
"""


def _llama_wheel_cached() -> bool:
    pip = shutil.which("pip", path=str(Path(sys.executable).parent))
    if pip is None:
        return False
    found = subprocess.run(
        [pip, "cache", "list", "--format=abspath", "llama_cpp_python-*"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return ".whl" in found.stdout


def _cannot_build() -> str | None:
    if shutil.which("dpkg-deb") is None:
        return "dpkg-deb is missing: not a Debian system"
    if not PYTHON.exists():
        return f"{PYTHON} is missing (the package's venv is made with Debian's Python)"
    if not _llama_wheel_cached():
        # Without the wheel pip compiles llama.cpp: ten minutes, not a test's business.
        return "no llama-cpp-python wheel in pip's cache (make test's set-up puts one there)"
    return None


def _deb_field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass
class Debs:
    version: str
    first: Path
    second: Path  # the same package under a higher version
    second_version: str
    broken: Path  # higher still, and its cortexd exits at once
    broken_version: str


def repack(tree: Path, out: Path, version: str, arch: str) -> Path:
    """The extracted package `tree` built again under `version` (gzip -1: quick)."""
    control = tree / "DEBIAN" / "control"
    control.write_text(
        re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
    )
    target = out / f"cortexd_{version}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(target)],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    return target


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Debs:
    reason = _cannot_build()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("deb")
    env = dict(os.environ)
    model = os.environ.get("CORTEX_TEST_MODEL")
    if model and Path(model).name == MODEL_NAME:
        env["DEB_MODEL"] = model  # the build checks its SHA-256 all the same
    done = subprocess.run(
        [str(BUILD), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"build failed:\n{done.stdout}\n{done.stderr}"
    first = Path(done.stdout.strip().splitlines()[-1])
    version, arch = _deb_field(first, "Version"), _deb_field(first, "Architecture")
    second_version, broken_version = f"{version}+1", f"{version}+2"
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(first), str(tree)], check=True, timeout=BUILD_TIMEOUT)
    second = repack(tree, out, second_version, arch)
    (tree / "opt/cortexd/bin/cortexd").write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    broken = repack(tree, out, broken_version, arch)
    shutil.rmtree(tree)
    return Debs(version, first, second, second_version, broken, broken_version)


# -- what is in the package -----------------------------------------------------------


def test_the_package_holds_the_venv_units_conffiles_and_the_checked_model(debs: Debs) -> None:
    deb = debs.first
    assert deb.name == f"cortexd_{debs.version}_{_deb_field(deb, 'Architecture')}.deb"
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for path in (
        "/opt/cortexd/bin/python3",
        "/opt/cortexd/bin/cortexd",
        "/opt/cortexd/lib/python3.11/site-packages/cortexd/__init__.py",
        "/opt/cortexd/lib/python3.11/site-packages/llama_cpp/lib/libllama.so",
        "/usr/bin/cortexd",
        "/usr/bin/cortexctl",
        "/lib/systemd/system/cortexd.service",
        "/lib/systemd/system/cortexd.socket",
        "/etc/cortex/daemon.conf",
        f"/var/lib/cortex/models/{MODEL_NAME}",
        "/usr/share/doc/cortexd/copyright",
    ):
        assert path in paths, f"{path} is not in the package"
    assert not [p for p in paths if "__pycache__" in p], "byte-code is postinst's to make"
    info = subprocess.run(
        ["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles", "md5sums"):
        assert script in info
    work = Path(str(deb) + ".x")
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True, timeout=BUILD_TIMEOUT)
    try:
        assert (work / "DEBIAN/conffiles").read_text().split() == [
            "/etc/cortex/daemon.conf",
            "/etc/cortex/alerts.yaml.example",
        ]
        unit = (work / "lib/systemd/system/cortexd.service").read_text()
        assert re.search(r"^ExecStart=/usr/bin/cortexd$", unit, re.M)
        assert (work / "etc/cortex/daemon.conf").read_text() == (
            REPO / "config/daemon.conf"
        ).read_text()
        script = (REPO / "scripts/fetch-model.sh").read_text()
        digest = re.search(r"^sha256=([0-9a-f]{64})$", script, re.M)
        assert digest
        model = work / "var/lib/cortex/models" / MODEL_NAME
        found = subprocess.run(
            ["sha256sum", str(model)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        assert found == digest.group(1)
        for script_name in ("cortexd", "cortexctl"):
            first = (work / "opt/cortexd/bin" / script_name).read_text().splitlines()[0]
            assert first == "#!/opt/cortexd/bin/python3.11", first
        staged = subprocess.run(
            ["grep", "-rIl", ".deb-build.", str(work / "opt")], capture_output=True, check=False
        )
        assert staged.stdout == b"", f"build paths left in: {staged.stdout.decode()[:500]}"
    finally:
        shutil.rmtree(work)


def lintian_tags(deb: Path) -> dict[str, set[str]]:
    """{'E': tags, 'W': tags, 'O': overridden tags} lintian reports for `deb`."""
    done = subprocess.run(
        ["lintian", "--show-overrides", "--no-tag-display-limit", str(deb)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    tags: dict[str, set[str]] = {"E": set(), "W": set(), "O": set()}
    for line in done.stdout.splitlines():
        match = re.match(r"^([EWO]): cortexd[^:]*: ([a-z0-9-]+)", line)
        if match:
            tags[match.group(1)].add(match.group(2))
    assert done.returncode in (0, 1, 2), done.stderr
    return tags


def test_lintian_reports_no_errors_and_every_kept_warning_is_explained(debs: Debs) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (the Makefile's APT_PACKAGES has it)")
    tags = lintian_tags(debs.first)
    assert tags["E"] == set(), f"lintian errors: {sorted(tags['E'])}"
    doc = PACKAGING_MD.read_text()
    unexplained = [t for t in sorted(tags["W"] | tags["O"]) if f"`{t}`" not in doc]
    assert unexplained == [], f"docs/packaging.md does not explain: {unexplained}"
    assert tags["O"], "the overrides were not read: lintian's output format changed?"


# -- in the systemd trial -------------------------------------------------------------


@pytest.fixture
def trial(debs: Debs, tmp_path: Path) -> Iterator[Trial]:
    reason = _trial_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "trial"
    _write_trial_files(root, inner=INNER_MOUNTS + INNER_PACKAGE + INNER_BOOT, source_units=False)
    (root / "debs").mkdir()
    for deb in (debs.first, debs.second, debs.broken):
        os.link(deb, root / "debs" / deb.name)  # both live under pytest's basetemp
    t = Trial(root)
    try:
        t.boot()
        yield t
    finally:
        t.close()


def inside(
    trial: Trial, *cmd: str, timeout: float = APT_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`cmd` in the trial, for commands that may take longer than Trial.run allows."""
    result = subprocess.run(
        ["nsenter", "-t", str(trial.pid1), "-a", "env", "DEBIAN_FRONTEND=noninteractive", *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result


def apt(trial: Trial, *args: str) -> subprocess.CompletedProcess[str]:
    return inside(trial, "apt", "-y", *args)


def installed_version(trial: Trial) -> str | None:
    out = trial.run(
        "dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}", "cortexd", check=False
    ).stdout.split()
    return out[0] if len(out) == 2 and out[1].startswith("ii") else None


def ctl(trial: Trial, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed cortexctl, as root."""
    return inside(trial, "/usr/bin/cortexctl", "--timeout", "60", *args, check=check)


def poll(predicate: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    deadline = time.monotonic() + within
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def main_pid(trial: Trial) -> int:
    return int(trial.show("cortexd.service", "MainPID")["MainPID"])


def exists(trial: Trial, path: str) -> bool:
    return trial.run("test", "-e", path, check=False).returncode == 0


@pytest.mark.root
def test_install_status_upgrade_remove_purge(trial: Trial, debs: Debs) -> None:
    # Install, offline (the namespace has no network).
    done = apt(trial, "install", f"{RELEASES}/{debs.first.name}")
    assert not re.search(r"^Get:\d+ https?:", done.stdout, re.M), done.stdout
    assert installed_version(trial) == debs.version
    cortex_gid = trial.run("getent", "group", "cortex").stdout.split(":")[2]
    trial.run("getent", "group", "cortex-admin")
    assert trial.run("systemctl", "is-enabled", "cortexd.socket").stdout.strip() == "enabled"
    trial.run("systemctl", "start", "cortexd.socket")
    st = trial.run("stat", "-c", "%a %U %G", "/run/cortex.sock").stdout.split()
    assert st == ["660", "root", "cortex"]

    # A member of cortex, with no flags: cortexctl finds /run/cortex.sock.
    as_member = trial.run(
        "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={cortex_gid}",
        "/usr/bin/cortexctl", "--json", "--timeout", "60", "status",
    )  # fmt: skip
    status = json.loads(as_member.stdout)
    assert status["pid"] == main_pid(trial)
    assert trial.show("cortexd.service", "ExecMainStartTimestamp")
    # The venv's llama.cpp serves the packaged model.
    poll(
        lambda: json.loads(ctl(trial, "--json", "model", "status").stdout)["state"] == "ready",
        "the packaged model to load",
    )
    assert trial.run("find", "/opt/cortexd", "-name", "*.pyc", "-print", "-quit").stdout, (
        "postinst compiled no byte-code"
    )

    # State and an operator's configuration, which the upgrade must keep.
    ctl(trial, "alerts", "send", "--message", "kept across the upgrade", "--level", "warning")
    trial.run("sed", "-i", "s/^  level: INFO$/  level: DEBUG/", "/etc/cortex/daemon.conf")
    trial.run("systemctl", "reload", "cortexd.service")
    before = main_pid(trial)

    apt(trial, "install", f"{RELEASES}/{debs.second.name}")
    assert installed_version(trial) == debs.second_version
    poll(lambda: main_pid(trial) not in (0, before), "the daemon to restart on the new version")
    config = json.loads(ctl(trial, "--json", "config", "show", "logging").stdout)["config"]
    assert config.get("logging", config)["level"] == "DEBUG"
    alerts = json.loads(ctl(trial, "--json", "alerts", "list").stdout)
    assert "kept across the upgrade" in json.dumps(alerts)

    # Remove: the program goes, configuration and state stay.
    apt(trial, "remove", "cortexd")
    for gone in ("/opt/cortexd", "/usr/bin/cortexctl", "/lib/systemd/system/cortexd.service"):
        assert not exists(trial, gone), f"{gone} survived apt remove"
    assert not exists(trial, "/run/cortex.sock")
    assert "level: DEBUG" in trial.run("cat", "/etc/cortex/daemon.conf").stdout
    assert exists(trial, "/var/lib/cortex/alerts.db")
    assert "rc" in trial.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "cortexd").stdout

    # Purge: configuration and state go too; the groups stay (files may carry their gids).
    apt(trial, "purge", "cortexd")
    for gone in ("/etc/cortex", "/var/lib/cortex"):
        assert not exists(trial, gone), f"{gone} survived apt purge"
    assert trial.run("dpkg-query", "-W", "cortexd", check=False).returncode != 0
    trial.run("getent", "group", "cortex")


def write_channel(trial: Trial, entries: list[dict[str, Any]]) -> None:
    manifest = json.dumps({"versions": entries})
    trial.run("sh", "-c", f"cat > {RELEASES}/releases.json", input=manifest)


def release(trial: Trial, deb: Path, version: str, sha256: str | None = None) -> dict[str, Any]:
    digest = sha256 or trial.run("sha256sum", f"{RELEASES}/{deb.name}").stdout.split()[0]
    return {"version": version, "url": deb.name, "sha256": digest, "architecture": "amd64"}


def alert_titles(trial: Trial) -> list[str]:
    found = json.loads(ctl(trial, "--json", "alerts", "list").stdout)
    return [a["title"] for a in (found["alerts"] if isinstance(found, dict) else found)]


@pytest.mark.root
def test_update_apply_system_installs_refuses_and_rolls_back(trial: Trial, debs: Debs) -> None:
    apt(trial, "install", f"{RELEASES}/{debs.first.name}")
    trial.run(
        "sed", "-i", f's|^  channel: ""$|  channel: file://{RELEASES}/releases.json|',
        "/etc/cortex/daemon.conf",
    )  # fmt: skip
    assert "releases.json" in trial.run("cat", "/etc/cortex/daemon.conf").stdout
    trial.run("systemctl", "start", "cortexd.socket")
    ctl(trial, "ping")
    trial.run("systemctl", "reload", "cortexd.service")

    # A wrong checksum: refused, and nothing changes.
    write_channel(trial, [release(trial, debs.second, debs.second_version, sha256="0" * 64)])
    pid = main_pid(trial)
    refused = ctl(trial, "update", "apply", "--system", "-y", check=False)
    assert refused.returncode == 1
    assert "refused, nothing was changed" in refused.stderr
    assert installed_version(trial) == debs.version
    assert main_pid(trial) == pid
    assert json.loads(ctl(trial, "--json", "update", "rollback", "--list").stdout) == []

    # The right one: check shows it, apply installs it and systemd restarts the daemon.
    write_channel(trial, [release(trial, debs.second, debs.second_version)])
    check = json.loads(ctl(trial, "--json", "update", "check", "--system").stdout)
    assert check["installed"] == debs.version
    assert check["newest"]["version"] == debs.second_version and check["newer"] is True
    applied = ctl(trial, "update", "apply", "--system", "-y", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"cortexd {debs.second_version} is running" in applied.stdout
    assert installed_version(trial) == debs.second_version
    assert main_pid(trial) != pid
    poll(
        lambda: (
            f"cortexd updated from {debs.version} to {debs.second_version}" in alert_titles(trial)
        ),
        "the alert saying it was updated",
    )
    (snapshot,) = json.loads(ctl(trial, "--json", "update", "rollback", "--list").stdout)
    (kept,) = snapshot["debs"]
    assert kept["version"] == debs.version and kept["file"]
    assert kept["source"] == ("dpkg-repack" if exists(trial, "/usr/bin/dpkg-repack") else "rebuilt")

    # A release that cannot start: installed, seen failing, rolled back to the kept one.
    write_channel(
        trial,
        [
            release(trial, debs.second, debs.second_version),
            release(trial, debs.broken, debs.broken_version),
        ],
    )
    failed = ctl(trial, "update", "apply", "--system", "-y", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "rolled back" in failed.stdout
    assert installed_version(trial) == debs.second_version
    assert trial.run("systemctl", "is-active", "cortexd.service").stdout.strip() == "active"
    poll(
        lambda: (
            f"cortexd {debs.broken_version} did not start; rolled back to {debs.second_version}"
            in alert_titles(trial)
        ),
        "the alert saying it was rolled back",
    )
    newest = json.loads(ctl(trial, "--json", "update", "rollback", "--list").stdout)[0]
    assert newest["debs"][0]["source"] == "downloaded"
