"""Install a new cortexd .deb, see the daemon start on it, else put the kept one back.

Runs as a transient systemd unit (`systemd-run`), outside the daemon's
sandbox and outside its cgroup, because installing the package restarts the
daemon that asked for it. The daemon copies this file next to the plan
before starting the unit: dpkg replaces the installed copy half-way through,
so the running one must not be it. Standard library only, for the same
reason.

    python3 -I installer.py PLAN.json

The plan (written by cortexd.updates.system) names the new .deb, the kept
.deb of the installed version, the service, its socket and the daemon's pid.
Steps, each recorded in the plan so the daemon that comes up (new or old)
reports the outcome:

1. `apt-get install` the new .deb. Its postinst restarts a running daemon
   through systemd (deb-systemd-invoke).
2. Verify: the service is active with a new main pid, dpkg has the new
   version, and the socket answers `version`. A start that fails
   (`Result` not `success`, the unit in `auto-restart` or `failed`) or no
   answer within the plan's `start_timeout` counts as failed.
3. On failure, install the kept .deb (downgrades allowed), reset the unit's
   failure count, restart it and verify again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

POLL = 0.5
COMMAND_TIMEOUT = 3600.0
PING_TIMEOUT = 10.0
TAIL_LINES = 40

Runner = Callable[[Sequence[str], float], tuple[int, str]]


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """(exit code, combined output) of `argv`."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no end after {timeout:g}s"
    except OSError as exc:
        return 127, f"{argv[0]}: {exc}"
    return done.returncode, done.stdout


class Plan:
    """The plan file: read once, then updated in place (atomically) as steps finish."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, encoding="utf-8") as fh:
            self.data: dict[str, Any] = json.load(fh)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def log(self, text: str) -> None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        self.save(log_tail=(self.data.get("log_tail", []) + lines)[-TAIL_LINES:])


def unit_state(service: str, runner: Runner = run) -> dict[str, str]:
    """ActiveState, SubState, Result and MainPID of `service`."""
    code, out = runner(
        ["systemctl", "show", service, "--property=ActiveState,SubState,Result,MainPID"], 60.0
    )
    if code != 0:
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def start_failed(state: dict[str, str]) -> bool:
    """Whether systemd has seen the service fail to start (or crash and wait to retry)."""
    return (
        state.get("ActiveState") == "failed"
        or state.get("SubState") == "auto-restart"
        or state.get("Result", "success") != "success"
    )


def installed_version(package: str, runner: Runner = run) -> str | None:
    code, out = runner(["dpkg-query", "-W", "-f", "${Version}\t${db:Status-Abbrev}", package], 60.0)
    if code != 0 or "\t" not in out:
        return None
    version, status = out.split("\t", 1)
    return version if status.startswith("ii") else None


def answers(socket_path: str, timeout: float = PING_TIMEOUT) -> bool:
    """Whether the daemon on `socket_path` answers a `version` request."""
    request = b'{"jsonrpc":"2.0","id":1,"method":"version"}\n'
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(request)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                data += chunk
        return "result" in json.loads(data)
    except (OSError, ValueError):
        return False


def verify(
    plan: Plan,
    version: str,
    *,
    old_pid: int,
    runner: Runner = run,
    ping: Callable[[str], bool] = answers,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None once the service runs `version` and answers; else why not."""
    service = plan["service"]
    deadline = clock() + float(plan["start_timeout"])
    restarted = False
    while True:
        state = unit_state(service, runner)
        if start_failed(state):
            return (
                f"{service} failed to start: {state.get('ActiveState')}/{state.get('SubState')}"
                f" ({state.get('Result')})"
            )
        pid = int(state.get("MainPID") or 0)
        not_restarted = state.get("ActiveState") in ("inactive", "deactivating") or (
            state.get("ActiveState") == "active" and pid == old_pid
        )
        if not_restarted and not restarted:
            # The package did not restart it (a policy-rc.d, a stopped
            # service): the restart still has to happen, through systemd.
            runner(["systemctl", "restart", service], COMMAND_TIMEOUT)
            restarted = True
            continue
        if (
            state.get("ActiveState") == "active"
            and pid not in (0, old_pid)
            and installed_version(plan["package"], runner) == version
            and ping(plan["socket"])
        ):
            return None
        if clock() > deadline:
            return (
                f"{service} did not answer on {plan['socket']} within"
                f" {float(plan['start_timeout']):g}s ({state.get('ActiveState')}/"
                f"{state.get('SubState')})"
            )
        sleep(POLL)


def install(plan: Plan, deb: str, runner: Runner = run) -> int:
    argv = [
        *plan["apt_command"],
        "-q",
        "-y",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confold",
        "install",
        deb,
    ]
    code, out = runner(argv, COMMAND_TIMEOUT)
    plan.log(out)
    return code


def main(
    argv: list[str],
    runner: Runner = run,
    ping: Callable[[str], bool] = answers,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Carry out the plan at argv[0]; 0 when the new version runs, 1 otherwise."""
    plan = Plan(argv[0])
    plan.save(state="installing", installer_pid=os.getpid())
    failure: str | None
    code = install(plan, plan["new_deb"], runner)
    if code != 0:
        failure = f"installing {os.path.basename(plan['new_deb'])} failed (exit {code})"
    else:
        plan.save(state="verifying")
        failure = verify(
            plan, plan["to"], old_pid=int(plan["daemon_pid"]), runner=runner, ping=ping,
            clock=clock, sleep=sleep,
        )  # fmt: skip
    if failure is None:
        plan.save(state="finished", outcome="updated", finished_at=time.time())
        return 0
    plan.log(failure)
    plan.save(state="rolling back", failure=failure)
    units = [plan["service"], plan["socket_unit"]]
    runner(["systemctl", "reset-failed", *units], 60.0)
    code = install(plan, plan["kept_deb"], runner)
    # Repeated failed starts may have failed the socket unit too (its trigger
    # limit), which removes the socket: bring both back.
    runner(["systemctl", "reset-failed", *units], 60.0)
    runner(["systemctl", "start", plan["socket_unit"]], COMMAND_TIMEOUT)
    runner(["systemctl", "restart", plan["service"]], COMMAND_TIMEOUT)
    problem = (
        f"reinstalling {os.path.basename(plan['kept_deb'])} failed (exit {code})"
        if code != 0
        else verify(
            plan, plan["from"], old_pid=-1, runner=runner, ping=ping, clock=clock, sleep=sleep
        )
    )
    if problem is not None:
        plan.log(problem)
    outcome = "rolled back" if problem is None else "rollback failed"
    plan.save(state="finished", outcome=outcome, finished_at=time.time(), rollback_problem=problem)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
