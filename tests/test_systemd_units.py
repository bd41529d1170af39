"""The shipped systemd units: they verify, score as hardened, and keep their promises.

PID 1 on the test machines is not systemd, so `systemctl` cannot start the
units here. What can run for real does: `systemd-analyze verify` loads both
units with systemd's own parser and dependency logic, and `systemd-analyze
security --offline=true` scores the service's sandbox exactly as it would on a
host. The daemon's side of the protocol (READY=1, WATCHDOG=1, RELOADING=1,
STOPPING=1, socket activation) is exercised against the real daemon by the
server and lifecycle tests.

`verify` checks that ExecStart= is executable, and `make install` puts the
entry point at /usr/local/bin/cortexd, which the test environment does not
have; the tests therefore verify a copy whose ExecStart= points at the
`cortexd` script installed beside the running interpreter (.venv/bin/cortexd).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
SERVICE = UNIT_DIR / "cortexd.service"
SOCKET = UNIT_DIR / "cortexd.socket"
DOC = REPO / "docs" / "systemd.md"

# SPEC §10: the service must rate at or below this.
MAX_EXPOSURE = 2.0
# The daemon's default server.shutdown_timeout; the unit must wait longer.
DAEMON_SHUTDOWN_TIMEOUT = 10.0
# server.max_connections default; LimitNOFILE must leave room beyond it.
MAX_CONNECTIONS = 1024
ANALYZE_TIMEOUT = 60.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)

Directives = dict[str, list[str]]


def parse_unit(path: Path) -> dict[str, Directives]:
    """Sections of a unit file as {section: {key: [values in order]}}.

    systemd keys may repeat (SystemCallFilter=, ListenStream=), which
    configparser cannot represent, hence this small reader.
    """
    sections: dict[str, Directives] = {}
    current: Directives | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span such as `30s`, `5min` or `1min 30s` in seconds."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def run_analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args],
        capture_output=True,
        text=True,
        timeout=ANALYZE_TIMEOUT,
        cwd=cwd,
        check=False,
    )


def installed_entry_point() -> Path:
    """The `cortexd` console script of the environment running the tests."""
    script = Path(sys.executable).parent / "cortexd"
    assert script.is_file(), f"{script} missing: install the package (make test does)"
    return script


@pytest.fixture
def unit_copy(tmp_path: Path) -> Iterator[Path]:
    """Both units in a temp dir, ExecStart= pointing at the installed entry point."""
    text = SERVICE.read_text(encoding="utf-8")
    text, count = re.subn(
        r"^ExecStart=.*$", f"ExecStart={installed_entry_point()}", text, flags=re.M
    )
    assert count == 1, "cortexd.service must have exactly one ExecStart="
    (tmp_path / SERVICE.name).write_text(text, encoding="utf-8")
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    yield tmp_path


def verify(directory: Path, *names: str) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify` on units in `directory`; (exit code, messages)."""
    result = run_analyze("verify", "--man=no", *(str(directory / n) for n in names), cwd=directory)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    return result.returncode, lines


def test_verify_passes_on_both_units(unit_copy: Path) -> None:
    code, lines = verify(unit_copy, "cortexd.service", "cortexd.socket")
    # verify also loads the units ours depend on (sockets.target, network.target
    # ...) from the host; a complaint about one of those is not ours to fix,
    # but any word about our units, warnings included, fails the test.
    ours = [ln for ln in lines if "cortexd" in ln]
    assert ours == [], "\n".join(ours)
    assert code == 0 or lines, f"verify failed (exit {code}) without saying why"
    assert code == 0, "verify failed on units other than ours:\n" + "\n".join(lines)


def test_verify_reports_a_broken_unit(unit_copy: Path) -> None:
    # The check above is only worth something if verify speaks up: a typo in
    # Type= and a missing executable must both be reported.
    service = unit_copy / "cortexd.service"
    text = service.read_text(encoding="utf-8")
    text = text.replace("Type=notify", "Type=notifyy", 1)
    text = re.sub(r"^ExecStart=.*$", "ExecStart=/nonexistent/cortexd", text, flags=re.M)
    service.write_text(text, encoding="utf-8")
    code, lines = verify(unit_copy, "cortexd.service", "cortexd.socket")
    report = "\n".join(lines)
    assert code != 0
    assert "notifyy" in report
    assert "/nonexistent/cortexd" in report


def security_report() -> tuple[float, list[str]]:
    """(overall exposure, names of the exposures still reported) for the service."""
    result = run_analyze("security", "--offline=true", "--no-pager", str(SERVICE))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for cortexd\.service:\s*([\d.]+)", result.stdout)
    assert match, f"no overall exposure in:\n{result.stdout}\n{result.stderr}"
    exposed = [
        ln.split()[1] for ln in result.stdout.splitlines() if ln.startswith("✗") and len(ln) > 2
    ]
    return float(match.group(1)), exposed


def test_security_exposure_at_most_two() -> None:
    score, exposed = security_report()
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}; still exposed: {exposed}"


def test_every_remaining_exposure_is_documented() -> None:
    # docs/systemd.md must say which feature needs each exposure and record
    # the score measured now.
    score, exposed = security_report()
    # A `|` inside a Markdown table cell is written `\|`.
    doc = DOC.read_text(encoding="utf-8").replace("\\|", "|")
    assert exposed, "systemd-analyze reported no exposures at all; parsing is broken"
    missing = [name for name in exposed if f"`{name}`" not in doc]
    assert missing == [], f"docs/systemd.md lacks a row for: {missing}"
    assert f"{score:.1f}" in doc, f"docs/systemd.md does not record the score {score:.1f}"
    assert "systemd-analyze security --offline=true" in doc


def test_service_directives() -> None:
    service = parse_unit(SERVICE)["Service"]
    unit = parse_unit(SERVICE)["Unit"]

    def one(key: str) -> str:
        values = service.get(key, [])
        assert len(values) == 1, f"{key}= set {len(values)} times: {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "/usr/local/bin/cortexd"
    reload_cmd = one("ExecReload").split()
    assert reload_cmd[0].endswith("kill") and "-HUP" in reload_cmd and "$MAINPID" in reload_cmd
    assert seconds(one("WatchdogSec")) > 0
    assert one("Restart") == "on-failure"
    assert seconds(one("TimeoutStopSec")) > DAEMON_SHUTDOWN_TIMEOUT
    assert one("EnvironmentFile") == "-/etc/default/cortexd"
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one(key) == "cortex"
    assert int(one("LimitNOFILE")) > MAX_CONNECTIONS
    assert one("MemoryHigh") == "384M"
    assert one("MemoryMax") == "512M"
    assert "cortexd.socket" in unit["Requires"][0].split()
    assert "cortexd.socket" in " ".join(unit["After"]).split()


def test_service_avoids_sandboxing_that_breaks_features() -> None:
    service = parse_unit(SERVICE)["Service"]
    # hidepid-style /proc hides the processes the checks count and the
    # /proc/PID/status that authorization reads; a private network stops
    # notifications; private users turn peers' uids into `nobody`.
    assert service.get("ProcSubset", ["all"]) == ["all"]
    assert service.get("ProtectProc", ["default"]) == ["default"]
    assert service.get("PrivateNetwork", ["no"]) == ["no"]
    assert service.get("PrivateUsers", ["no"]) == ["no"]
    # systemd 252 has no notify-reload.
    assert service["Type"] != ["notify-reload"]


def test_socket_directives() -> None:
    socket = parse_unit(SOCKET)["Socket"]
    assert socket["ListenStream"] == ["/run/cortex.sock"]
    assert socket["SocketMode"] == ["0660"]
    assert socket["SocketGroup"] == ["cortex"]
    assert socket.get("Accept", ["no"]) == ["no"]
