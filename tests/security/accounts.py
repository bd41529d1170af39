"""Real accounts for access tests: made with groupadd/useradd, used through setpriv.

Root only. `Accounts` creates two throw-away groups (the socket's group and
the admin group) and four users — an outsider in neither, a reader in the
socket's group, a journal member (also in `adm` or `systemd-journal`) and an
admin (also in the admin group) — and deletes them all afterwards.

Whatever the accounts run must be reachable by them even when the checkout
is not (under /root, say): `Runner` copies the client (`cortexctl` and the
two modules of `cortexd` it imports) into a world-readable temporary
directory and runs it with an interpreter the account can execute, found by
trying.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cortexctl
import cortexd

TOOLS = ("setpriv", "useradd", "userdel", "groupadd", "groupdel")
JOURNAL_GROUPS = ("adm", "systemd-journal")
WAIT = 60.0
ROLES = ("outsider", "reader", "journal", "admin")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def skip_reason() -> str | None:
    """Why accounts cannot be made here, or None."""
    if os.getuid() != 0:
        return "needs root to create accounts and switch to them"
    missing = missing_tools()
    if missing:
        return f"needs {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class Account:
    role: str
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Accounts:
    socket_group: str
    socket_gid: int
    admin_group: str
    admin_gid: int
    users: dict[str, Account]

    def __getitem__(self, role: str) -> Account:
        return self.users[role]

    def daemon_config(self) -> dict[str, Any]:
        """The server settings that make these groups the daemon's."""
        return {"server": {"socket_group": self.socket_group, "admin_group": self.admin_group}}


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=WAIT)


@contextlib.contextmanager
def accounts() -> Iterator[Accounts]:
    """Make the groups and users; remove them afterwards, whatever happened."""
    suffix = secrets.token_hex(3)
    journal_group = next((g for g in JOURNAL_GROUPS if _group_exists(g)), None)
    made_journal_group = journal_group is None
    if journal_group is None:
        journal_group = "systemd-journal"  # the daemon looks for it by this name
    groups = [f"cxs{suffix}", f"cxa{suffix}"] + ([journal_group] if made_journal_group else [])
    users: list[str] = []
    try:
        for group in groups:
            _run(["groupadd", group])
        socket_group, admin_group = groups[0], groups[1]
        members = {
            "outsider": [],
            "reader": [socket_group],
            "journal": [socket_group, journal_group],
            "admin": [socket_group, admin_group],
        }
        made: dict[str, Account] = {}
        for role, extra in members.items():
            name = f"cx{role[:3]}{suffix}"
            argv = ["useradd", "--system", "--no-create-home", "--user-group"]
            argv += ["--shell", "/usr/sbin/nologin", "--home-dir", "/nonexistent"]
            if extra:
                argv += ["--groups", ",".join(extra)]
            _run([*argv, name])
            users.append(name)
            entry = pwd.getpwnam(name)
            made[role] = Account(role, name, entry.pw_uid, entry.pw_gid)
        yield Accounts(
            socket_group,
            grp.getgrnam(socket_group).gr_gid,
            admin_group,
            grp.getgrnam(admin_group).gr_gid,
            made,
        )
    finally:
        for name in users:
            subprocess.run(["userdel", name], check=False, capture_output=True, timeout=WAIT)
        for group in groups:
            subprocess.run(["groupdel", group], check=False, capture_output=True, timeout=WAIT)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


# A standard-library client: connects, sends each request of argv[2] (a JSON
# list) on one connection, prints one JSON line per answer, or the connect error.
PROBE = r"""
import json, socket, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(float(sys.argv[3]) if len(sys.argv) > 3 else 30)
try:
    sock.connect(path)
except OSError as exc:
    print(json.dumps({"connect_error": exc.errno, "message": str(exc)}))
    sys.exit(0)
buf = b""
for n, (method, params) in enumerate(requests):
    frame = {"jsonrpc": "2.0", "id": n, "method": method}
    if params is not None:
        frame["params"] = params
    try:
        sock.sendall(json.dumps(frame).encode() + b"\n")
    except OSError:
        pass  # refused (BUSY): the daemon's parting line is read below
    while True:
        while b"\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                print(json.dumps({"closed": True}))
                sys.exit(0)
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        answer = json.loads(line)
        if answer.get("method") == "stream":
            continue
        print(json.dumps(answer))
        break
"""


# What a daemon run as another user does not need from the test environment.
_NOT_NEEDED = (
    "llama_cpp",
    "numpy",
    "numpy.libs",
    "mypy",
    "mypyc",
    "ruff",
    "pip",
    "setuptools",
    "_pytest",
    "pytest",
    "pytest_asyncio",
    "__pycache__",
    "include",
    "lib",
)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@contextlib.contextmanager
def readable_install(probe_uid: int) -> Iterator[tuple[str, Path]]:
    """The daemon, the client and their dependencies where any user can read them.

    Yields (an interpreter uid `probe_uid` can run, the directory to put on
    PYTHONPATH). Files are hard links where the filesystem allows, so this
    is quick; llama.cpp, numpy and the test tools are left out.
    """
    root = Path(tempfile.mkdtemp(prefix="cxinstall", dir="/tmp"))
    try:
        os.chmod(root, 0o755)
        skip = shutil.ignore_patterns("__pycache__", "*.pth")
        for package in (cortexd, cortexctl):
            source = Path(package.__file__).parent
            shutil.copytree(source, root / source.name, ignore=skip, copy_function=_link_or_copy)
        site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
        for entry in os.listdir(site):
            if entry in _NOT_NEEDED or entry.endswith(".pth") or entry in ("cortexd", "cortexctl"):
                continue
            source = os.path.join(site, entry)
            if os.path.isdir(source):
                shutil.copytree(source, root / entry, ignore=skip, copy_function=_link_or_copy)
            else:
                _link_or_copy(source, str(root / entry))
        for path in (root, *root.rglob("*")):
            if path.is_dir():
                os.chmod(path, 0o755)
        for python in _pythons():
            probe = subprocess.run(
                [
                    "setpriv",
                    f"--reuid={probe_uid}",
                    f"--regid={probe_uid}",
                    "--clear-groups",
                    python,
                    "-c",
                    "import cortexd.app, cortexctl.cli",
                ],
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
                capture_output=True,
                text=True,
                timeout=WAIT,
                cwd="/",
                check=False,
            )
            if probe.returncode == 0:
                yield python, root
                return
        raise AssertionError(f"no interpreter uid {probe_uid} can run the copy in {root}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _pythons() -> list[str]:
    """Interpreters to try, the system's first: root's own (pyenv, a venv) may sit in
    a directory other users cannot enter."""
    candidates = [
        "/usr/bin/python3",
        os.path.realpath(sys.executable),
        getattr(sys, "_base_executable", ""),
        shutil.which("python3") or "",
    ]
    return list(dict.fromkeys(c for c in candidates if c))


class Runner:
    """Runs the client code as an account, from a copy every account can read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.python = ""

    @classmethod
    @contextlib.contextmanager
    def prepared(cls, probe_as: Account) -> Iterator[Runner]:
        root = Path(tempfile.mkdtemp(prefix="cxclient", dir="/tmp"))
        try:
            os.chmod(root, 0o755)
            package = root / "cortexd"
            package.mkdir()
            for module in ("__init__.py", "protocol.py"):
                shutil.copy(Path(cortexd.__file__).parent / module, package / module)
            shutil.copytree(
                Path(cortexctl.__file__).parent,
                root / "cortexctl",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            (root / "probe.py").write_text(PROBE)
            for path in (root, *root.rglob("*")):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            runner = cls(root)
            runner.python = runner._find_python(probe_as)
            yield runner
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _find_python(self, account: Account) -> str:
        tried = []
        for python in _pythons():
            done = self.run(account, [python, "-c", "import cortexctl.cli"], check=False)
            if done.returncode == 0:
                return python
            tried.append(f"{python}: {done.stderr.strip()[-200:]}")
        raise AssertionError(f"no interpreter {account.name} can run: {tried}")

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.root), "NO_COLOR": "1", **extra}

    def run(
        self,
        account: Account,
        argv: list[str],
        *,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = WAIT,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` as `account` with its own groups (from the group database)."""
        done = subprocess.run(
            ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.env(),
            cwd="/",
            check=False,
        )
        if check:
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done

    def popen(
        self, account: Account, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or self.env(),
            cwd="/",
        )

    def cortexctl(
        self, account: Account, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run(account, [self.python, "-m", "cortexctl", *args], check=False, env=env)

    def calls(
        self, account: Account, socket_path: str, requests: list[tuple[str, Any]]
    ) -> list[dict[str, Any]]:
        """Send `requests` on one connection as `account`; one answer (or error) each."""
        done = self.run(
            account,
            [self.python, str(self.root / "probe.py"), socket_path, json.dumps(requests)],
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
