"""The ways a member of the admin group or a reader got root's power, tried again.

Each test is the attack as a hostile local user would make it, with real
accounts (see accounts.py) against the real daemon running as root:

- an admin forges a backup to make root run a program, and restores an
  older genuine one to change a root-only key;
- an archive whose configuration file climbs out with `..` and asks for 4755;
- a gzip bomb from an admin;
- a reader holding connections while root calls `shutdown`;
- a fake server in another user's /tmp/cortex-<uid>;
- a storm of forced update checks (and checks and fix plans) from readers;
- an abandoned upload that root takes over.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from cortexd.backup import hostkey
from tests.backup.test_restore_guards import gzip_bomb
from tests.daemon import DaemonProcess, merge, running_daemon, short_tmpdir
from tests.security.accounts import Account, Accounts, Runner

pytestmark = pytest.mark.root

WAIT = 60.0
FAKE_APT = """#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *update*) sleep {delay}; echo "Hit:1 http://deb.example stable InRelease" ;;
  *) echo "Reading package lists..." ;;
esac
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(short_tmpdir("cxe"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Apt:
    """A stand-in for apt-get that records its calls (the daemon runs it as root)."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        self.log = root / "apt-calls.log"
        self.command = root / "apt-get"
        self.command.write_text(FAKE_APT.format(log=self.log, delay=delay))
        self.command.chmod(0o755)
        self.lists = root / "lists"
        self.lists.mkdir()
        (self.lists / "deb.example_dists_stable_InRelease").write_text("")

    def config(self) -> dict[str, Any]:
        return {"updates": {"apt_command": [str(self.command)], "apt_lists_dir": str(self.lists)}}

    def refreshes(self) -> int:
        if not self.log.exists():
            return 0
        return sum("update" in line.split() for line in self.log.read_text().splitlines())


def owned_dir(base: Path, account: Account) -> Path:
    path = base / account.name
    path.mkdir()
    os.chown(path, account.uid, account.gid)
    path.chmod(0o700)
    return path


def error_of(answer: dict[str, Any]) -> str:
    return str(answer["error"]["data"]["name"]) if "error" in answer else "ok"


# -- forged and replayed archives -------------------------------------------------------


def rewrite(
    source: Path,
    target: Path,
    *,
    edit_manifest: Callable[[dict[str, Any]], None],
    members: dict[str, bytes],
    key: bytes | None = None,
) -> None:
    """Copy an archive with some members replaced and the manifest fixed up to match.

    The checksums and the digest are recomputed, as anyone can; the signature
    is made again only with `key` (the worst case: someone who has it).
    """
    with tarfile.open(source) as tar:
        contents = {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]
    contents.update(members)
    manifest = orjson.loads(contents.pop("manifest.json"))
    for entry in manifest["files"]:
        data = contents[entry["name"]]
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    edit_manifest(manifest)
    manifest["digest"] = hashlib.sha256(
        orjson.dumps(manifest["files"], option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    if key is not None:
        manifest["signature"] = hostkey.sign(key, manifest)
    with tarfile.open(target, "w:gz") as tar:
        for name, data in {"manifest.json": orjson.dumps(manifest), **contents}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def config_member(archive: Path, origin: str) -> str:
    with tarfile.open(archive) as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    return next(f["name"] for f in manifest["files"] if f.get("origin") == origin)


def test_a_forged_archive_cannot_make_root_run_a_program(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    marker = workdir / "x-ran"
    evil = workdir / "x.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    apt = Apt(workdir)
    admin = accts["admin"]
    home = owned_dir(workdir, admin)
    with running_daemon(merge(accts.daemon_config(), apt.config())) as daemon:
        sock = daemon.socket_path
        archive = home / "b.tar.gz"
        done = runner.cortexctl(admin, "--socket", sock, "backup", str(archive))
        assert done.returncode == 0, done.stderr
        with tarfile.open(archive) as tar:
            assert "key/host.key" not in tar.getnames(), "an admin never gets the host key"

        config = yaml.safe_load(Path(daemon.config_path).read_text())
        config["updates"]["apt_command"] = [str(evil)]
        forged = home / "forged.tar.gz"
        rewrite(
            archive,
            forged,
            edit_manifest=lambda m: None,
            members={config_member(archive, daemon.config_path): yaml.safe_dump(config).encode()},
        )
        os.chown(forged, admin.uid, admin.gid)
        before = Path(daemon.config_path).read_text()
        for extra in ((), ("--foreign",)):
            done = runner.cortexctl(
                admin, "--socket", sock, "restore", str(forged), "--config", "-y", *extra
            )
            assert done.returncode == 1, done.stdout
            assert "PERMISSION_DENIED" in done.stderr
            assert "only root may restore it, with foreign: true" in done.stderr
        assert Path(daemon.config_path).read_text() == before
        answers = runner.calls(accts["reader"], sock, [("updates.check", {"force": True})])
        assert error_of(answers[0]) == "ok"
    assert apt.refreshes() == 1
    assert not marker.exists()


def test_an_older_genuine_archive_cannot_change_a_root_only_key(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    apt = Apt(workdir)
    admin = accts["admin"]
    home = owned_dir(workdir, admin)
    with running_daemon(merge(accts.daemon_config(), apt.config())) as daemon:
        sock = daemon.socket_path
        archive = home / "b.tar.gz"
        assert runner.cortexctl(admin, "--socket", sock, "backup", str(archive)).returncode == 0
        # Since the backup, root chose another apt command and an alert was raised.
        newer = workdir / "apt-get-2"
        shutil.copy(apt.command, newer)
        config = yaml.safe_load(Path(daemon.config_path).read_text())
        config["updates"]["apt_command"] = [str(newer)]
        daemon.write_config(config)
        daemon.call("config.reload")
        roots = Path(daemon.config_path).read_text()
        raised = daemon.call("alerts.raise", {"title": "after the backup"})["alert"]["id"]

        done = runner.cortexctl(admin, "--socket", sock, "restore", str(archive), "--config", "-y")
        assert done.returncode == 1
        assert "PERMISSION_DENIED" in done.stderr
        assert "only root may change updates.apt_command" in done.stderr
        assert Path(daemon.config_path).read_text() == roots
        assert daemon.call("alerts.get", {"id": raised})["alert"]["title"] == "after the backup"
        assert not list((Path(daemon.state_dir) / "backups").glob("pre-restore-*"))

        # The same archive without its configuration: this host's own, so an admin may.
        done = runner.cortexctl(admin, "--socket", sock, "restore", str(archive), "-y")
        assert done.returncode == 0, done.stderr
        ids = {a["id"] for a in daemon.call("alerts.list", {"state": "all"})["alerts"]}
        assert raised not in ids
        assert Path(daemon.config_path).read_text() == roots


def test_an_update_rollback_cannot_change_a_root_only_key_for_an_admin(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    apt = Apt(workdir)
    with running_daemon(merge(accts.daemon_config(), apt.config())) as daemon:
        snapshot = daemon.call("updates.snapshot", timeout=120)["snapshot"]["id"]
        newer = workdir / "apt-get-2"
        shutil.copy(apt.command, newer)
        config = yaml.safe_load(Path(daemon.config_path).read_text())
        config["updates"]["apt_command"] = [str(newer)]
        daemon.write_config(config)
        daemon.call("config.reload")
        roots = Path(daemon.config_path).read_text()
        answer = runner.calls(
            accts["admin"], daemon.socket_path, [("updates.rollback", {"id": snapshot})]
        )[0]
        assert error_of(answer) == "PERMISSION_DENIED"
        assert answer["error"]["data"]["keys"] == ["updates.apt_command"]
        assert Path(daemon.config_path).read_text() == roots
        # Root may put its own earlier choice back.
        done = daemon.call("updates.rollback", {"id": snapshot}, timeout=120)
        assert done["config_restored"] == [daemon.config_path]
        restored = yaml.safe_load(Path(daemon.config_path).read_text())
        assert restored["updates"]["apt_command"] == [str(apt.command)]
        assert stat.S_IMODE(os.stat(daemon.config_path).st_mode) == 0o644


def test_a_climbing_config_path_with_mode_4755_writes_nothing(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    victim = workdir / "usr" / "local" / "bin"
    victim.mkdir(parents=True)
    admin = accts["admin"]
    home = owned_dir(workdir, admin)
    with running_daemon(accts.daemon_config()) as daemon:
        archive = home / "b.tar.gz"
        sock = daemon.socket_path
        assert runner.cortexctl(admin, "--socket", sock, "backup", str(archive)).returncode == 0
        member = config_member(archive, daemon.config_path)
        confdir = os.path.dirname(daemon.config_path)
        climbing = f"{confdir}/../{victim.relative_to('/tmp')}/x"
        assert os.path.normpath(climbing) == str(victim / "x")

        def climb(manifest: dict[str, Any]) -> None:
            for entry in manifest["files"]:
                if entry["name"] == member:
                    entry["origin"], entry["mode"] = climbing, 0o4755

        payload = Path("/usr/bin/id").read_bytes()
        # The worst case first: signed with the host key, restored by the admin...
        key = (Path(daemon.state_dir) / "host.key").read_bytes()
        signed = home / "climb-signed.tar.gz"
        rewrite(archive, signed, edit_manifest=climb, members={member: payload}, key=key)
        os.chown(signed, admin.uid, admin.gid)
        by_admin = runner.cortexctl(
            admin, "--socket", sock, "--json", "restore", str(signed), "--config", "-y"
        )
        # ...then unsigned, restored by root as a foreign archive.
        unsigned = home / "climb.tar.gz"
        rewrite(archive, unsigned, edit_manifest=climb, members={member: payload})
        by_root = subprocess.run(
            [
                *(sys.executable, "-m", "cortexctl", "--socket", sock, "--json", "restore"),
                *(str(unsigned), "--config", "--foreign", "-y"),
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        for done in (by_admin, by_root):
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)
            assert result["config_restored"] == []
            assert result["config_skipped"] == [
                {
                    "origin": climbing,
                    "reason": "not a normalised path (a '.', '..' or empty component)",
                }
            ]
        assert list(victim.iterdir()) == []
        mode = stat.S_IMODE(os.stat(daemon.config_path).st_mode)
        assert not mode & (stat.S_ISUID | stat.S_ISGID)


def test_a_gzip_bomb_from_an_admin_is_refused_unread(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    admin = accts["admin"]
    home = owned_dir(workdir, admin)
    bomb = home / "bomb.tar.gz"
    bomb.write_bytes(gzip_bomb(1 << 30))
    os.chown(bomb, admin.uid, admin.gid)
    with running_daemon(accts.daemon_config()) as daemon:
        started = time.monotonic()
        done = runner.cortexctl(admin, "--socket", daemon.socket_path, "restore", str(bomb), "-y")
        assert done.returncode == 1
        assert "PERMISSION_DENIED" in done.stderr and "is not signed" in done.stderr
        assert time.monotonic() - started < 30
        assert os.listdir(Path(daemon.state_dir) / "backups" / "tmp") == []
        assert daemon.call("ping")["pong"] is True


# -- connections ------------------------------------------------------------------------

HOLD = r"""
import json, socket, sys
path, tries = sys.argv[1], int(sys.argv[2])
held, refusal = [], None
for _ in range(tries):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    try:
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
    except OSError:
        pass  # refused: the BUSY line is waiting to be read
    answer = json.loads(s.makefile("rb").readline())
    if "error" in answer:
        refusal = answer["error"]
        s.close()
        break
    held.append(s)
print(json.dumps({"held": len(held), "refusal": refusal}), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold_script(workdir: Path) -> str:
    path = workdir / "hold.py"
    path.write_text(HOLD)
    path.chmod(0o644)
    return str(path)


def hold(runner: Runner, who: Account, daemon: DaemonProcess, script: str) -> tuple[Any, dict]:
    proc = runner.popen(who, [runner.python, script, daemon.socket_path, "100"])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, json.loads(line)


def release(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=WAIT)


def test_a_reader_holding_connections_cannot_keep_root_from_shutdown(
    accts: Accounts, runner: Runner, hold_script: str
) -> None:
    config = {"server": {"max_connections": 16, "max_connections_per_user": 100}}
    config["server"]["reserved_connections"] = 4
    with running_daemon(merge(accts.daemon_config(), config)) as daemon:
        proc, report = hold(runner, accts["reader"], daemon, hold_script)
        try:
            assert report["held"] == 12
            assert report["refusal"]["data"] == {"name": "BUSY", "limit": 12, "scope": "reserved"}
            # Another reader is refused too; an admin and root get the kept connections.
            other = runner.calls(accts["journal"], daemon.socket_path, [("ping", None)])
            assert error_of(other[0]) == "BUSY"
            admin = runner.calls(accts["admin"], daemon.socket_path, [("ping", None)])
            assert admin[0]["result"]["pong"] is True
            done = subprocess.run(
                [sys.executable, "-m", "cortexctl", "--socket", daemon.socket_path, "shutdown"],
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert daemon.wait() == 0
        finally:
            release(proc)


def test_one_reader_cannot_take_every_connection(
    accts: Accounts, runner: Runner, hold_script: str
) -> None:
    config = {"server": {"max_connections": 16, "max_connections_per_user": 3}}
    with running_daemon(merge(accts.daemon_config(), config)) as daemon:
        proc, report = hold(runner, accts["reader"], daemon, hold_script)
        try:
            assert report["held"] == 3
            assert report["refusal"]["data"] == {"name": "BUSY", "limit": 3, "scope": "user"}
            assert f"uid {accts['reader'].uid}" in report["refusal"]["message"]
            other = runner.calls(accts["journal"], daemon.socket_path, [("ping", None)])
            assert other[0]["result"]["pong"] is True
            status = daemon.call("status")["server"]
            assert status["connections_refused"] >= 1
        finally:
            release(proc)


# -- a fake daemon in another user's /tmp/cortex-<uid> ----------------------------------

FAKE_DAEMON = r"""
import os, socket, sys
os.umask(0)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
sock.listen(8)
print("ready", flush=True)
with open(sys.argv[2], "ab", buffering=0) as log:
    while True:
        conn, _ = sock.accept()
        conn.settimeout(2)
        try:
            while chunk := conn.recv(65536):
                log.write(chunk)
            conn.sendall(b'{"jsonrpc":"2.0","id":1,"result":{"pong":true}}\n')
        except OSError:
            pass
        conn.close()
"""


def test_cortexctl_refuses_a_fake_daemon_in_a_directory_another_user_made(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    victim, attacker = accts["reader"], accts["journal"]
    trap = Path(f"/tmp/cortex-{victim.uid}")
    assert not trap.exists(), f"{trap} exists before the test"
    lair = owned_dir(workdir, attacker)
    lair.chmod(0o755)
    script = workdir / "fake.py"
    script.write_text(FAKE_DAEMON)
    log = lair / "received"
    runner.run(attacker, ["mkdir", "-m", "0755", str(trap)])
    server = runner.popen(attacker, [runner.python, str(script), f"{trap}/cortex.sock", str(log)])
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        env = runner.env(HOME="/nonexistent")  # no XDG_RUNTIME_DIR, no CORTEX_SOCKET
        upload = workdir / "state.tar.gz"
        upload.write_bytes(b"the victim's archive")
        upload.chmod(0o644)
        out = workdir / "victim-out"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        for args in (("status",), ("restore", str(upload), "-y"), ("backup", f"{out}/b.tar.gz")):
            done = runner.cortexctl(victim, *args, env=env)
            assert done.returncode == 3, (args, done.stdout, done.stderr)
            assert f"its directory {trap} belongs to uid {attacker.uid}" in done.stderr
            assert "nothing was sent" in done.stderr
        assert list(out.iterdir()) == []
        assert not log.exists() or log.read_bytes() == b""
    finally:
        server.kill()
        server.communicate(timeout=WAIT)
        shutil.rmtree(trap, ignore_errors=True)


# -- root work readers can trigger --------------------------------------------------------


def test_a_storm_of_forced_update_checks_runs_apt_once(
    accts: Accounts, runner: Runner, workdir: Path
) -> None:
    apt = Apt(workdir, delay=3.0)
    reader = accts["reader"]
    probe = str(runner.root / "probe.py")
    with running_daemon(merge(accts.daemon_config(), apt.config())) as daemon:
        sock = daemon.socket_path
        request = json.dumps([["updates.check", {"force": True}]])
        storm = [runner.popen(reader, [runner.python, probe, sock, request]) for _ in range(5)]
        answers = []
        for proc in storm:
            out, err = proc.communicate(timeout=WAIT)
            assert proc.returncode == 0, err
            answers.append(json.loads(out)["result"])
        assert apt.refreshes() == 1
        assert sorted(bool(a.get("joined")) for a in answers) == [False, True, True, True, True]
        assert all(a["lists_refresh_ok"] is True for a in answers)

        again = runner.calls(reader, sock, [("updates.check", {"force": True})])[0]["result"]
        assert again["force_limited"] is True and again["cached"] is True
        assert 0 <= again["age_seconds"] < 60
        assert 0 < again["next_force_in"] <= 300
        shown = runner.cortexctl(reader, "--socket", sock, "update", "check", "--force")
        assert shown.returncode == 0, shown.stderr
        assert "Not refreshed now: once per updates.force_interval" in shown.stdout
        assert apt.refreshes() == 1

        admin = runner.calls(accts["admin"], sock, [("updates.check", {"force": True})])
        assert "force_limited" not in admin[0]["result"]
        assert apt.refreshes() == 2


def test_readers_rerun_checks_and_plans_at_most_once_per_interval(
    accts: Accounts, runner: Runner
) -> None:
    with running_daemon(accts.daemon_config()) as daemon:
        sock = daemon.socket_path
        run = ("checks.run", {"ids": ["cpu_load"]})
        plan = ("fixes.plan", {"fix_id": "clear_apt_locks"})
        first, second, plan1, plan2 = runner.calls(accts["reader"], sock, [run, run, plan, plan])
        # The monitor's first round may have run cpu_load already: then even the
        # reader's first call gets that result. The second one does in any case.
        ran_at = first["result"]["results"][0]["finished_at"]
        again = second["result"]["results"][0]
        assert again["cached"] is True and again["finished_at"] == ran_at
        assert 0 <= again["age_seconds"] < 60
        assert "cached" not in plan1["result"] and plan2["result"]["cached"] is True
        assert plan2["result"]["plan"] == plan1["result"]["plan"]
        admin = runner.calls(accts["admin"], sock, [run, plan])
        assert "cached" not in admin[0]["result"]["results"][0]
        assert admin[0]["result"]["results"][0]["finished_at"] > ran_at
        assert "cached" not in admin[1]["result"]


# -- uploads ----------------------------------------------------------------------------


def test_root_takes_over_an_abandoned_upload_and_only_owners_abort(
    accts: Accounts, runner: Runner
) -> None:
    begin = ("restore.begin", {"size": 10, "sha256": "0" * 64})
    with running_daemon(
        merge(accts.daemon_config(), {"backup": {"upload_idle_seconds": 10}})
    ) as daemon:
        sock = daemon.socket_path
        admin = accts["admin"]
        abandoned = runner.calls(admin, sock, [begin])[0]["result"]["upload_id"]
        with pytest.raises(Exception, match="uid") as busy:
            daemon.call(*begin)
        assert str(admin.uid) in str(busy.value)
        time.sleep(1.2)  # a tenth of the idle limit: stale enough for root
        mine = daemon.call(*begin)["upload_id"]
        gone = runner.calls(admin, sock, [("restore.abort", {"upload_id": abandoned})])
        assert error_of(gone[0]) == "NOT_FOUND"
        theirs = runner.calls(admin, sock, [begin, ("restore.abort", {"upload_id": mine})])
        assert error_of(theirs[0]) == "BUSY"
        assert error_of(theirs[1]) == "PERMISSION_DENIED"
        assert "belongs to another user" in theirs[1]["error"]["message"]
        reader = runner.calls(accts["reader"], sock, [("restore.abort", {"upload_id": mine})])
        assert error_of(reader[0]) == "PERMISSION_DENIED"
        assert daemon.call("restore.abort", {"upload_id": mine})["aborted"] == mine
