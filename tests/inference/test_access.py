"""Who may load what, and a fair share of the queue, with real accounts.

The daemon runs as root with the real model; the callers are other uids
through `setpriv`: an admin (in the admin group, not root) who tries to make
the daemon read /etc/shadow, and readers who flood the queue while an
admin's request is served. Needs root (to create groups and switch users).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess, running_daemon, short_tmpdir
from tests.inference.conftest import inference_config, wait_for, wait_state
from tests.inference.helpers import COUNTING_PROMPT, Background
from tests.test_auth import Groups, groups, python_for_nobody  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root

ADMIN_UID = 65530
READERS = (65534, 65533, 65532, 65531)
CLI_TIMEOUT = 120

CALL = r"""
import json, sys
from cortexctl.client import Client
from cortexd.protocol import CortexError
socket_path, method, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    with Client(socket_path, timeout=60) as client:
        print(json.dumps({"result": client.call(method, params)}))
except CortexError as exc:
    print(json.dumps({"error": exc.to_error()}))
"""

FLOOD = r"""
import json, sys, threading
from cortexctl.client import Client
from cortexd.protocol import CortexError
socket_path, count, params = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
lock = threading.Lock()

def say(what):
    with lock:
        print(json.dumps(what), flush=True)

def first(data):
    if "request_id" in data:
        say({"queued": data["request_id"], "position": data["position"]})

def one():
    try:
        with Client(socket_path, timeout=120) as client:
            say({"result": client.call("inference.generate", params, on_stream=first)})
    except CortexError as exc:
        say({"error": exc.to_error()})

threads = [threading.Thread(target=one) for _ in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def as_user(uid: int, *gids: int) -> list[str]:
    """The setpriv prefix that runs a command as `uid` with only `gids`."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}"]
    if gids:
        return [*prefix, "--groups=" + ",".join(map(str, gids))]
    return [*prefix, "--clear-groups"]


def flood(
    python: str, d: DaemonProcess, who: list[str], count: int, params: dict[str, Any]
) -> subprocess.Popen[str]:
    """`count` concurrent streamed requests as `who`; one JSON line per event."""
    command = [*who, python, "-c", FLOOD, d.socket_path, str(count), json.dumps(params)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd="/")


def call_as(
    python: str, d: DaemonProcess, who: list[str], method: str, params: dict[str, Any]
) -> dict[str, Any]:
    done = subprocess.run(
        [*who, python, "-c", CALL, d.socket_path, method, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


@pytest.fixture(scope="module")
def shared_models() -> Iterator[Path]:
    """A model directory anyone may write to (mode 1777), as a careless host might have."""
    path = Path(short_tmpdir("cxm"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def access_daemon(
    model_path: str,
    groups: Groups,  # noqa: F811
    shared_models: Path,
) -> Iterator[DaemonProcess]:
    config = inference_config(model_path, queue_depth=8)  # 2 per reader, 2 for admins
    config["inference"]["model_dirs"].append(str(shared_models))
    config["server"] = {"socket_group": groups.socket_name, "admin_group": groups.admin_name}
    with running_daemon(config) as d:
        wait_state(d, {"ready"})
        yield d


def test_an_admin_cannot_make_the_daemon_read_a_file_outside_the_model_dirs(
    access_daemon: DaemonProcess,
    groups: Groups,  # noqa: F811
    python_for_nobody: str,  # noqa: F811
    model_path: str,
    shared_models: Path,
) -> None:
    admin = as_user(ADMIN_UID, groups.socket_gid, groups.admin_gid)
    home = Path(short_tmpdir("cxh"))
    try:
        home.chmod(0o755)
        os.chown(home, ADMIN_UID, ADMIN_UID)
        # The admin's own symlink to /etc/shadow, where the admin may write…
        link = home / "shadow.gguf"
        # …and one inside a model directory the admin can write to.
        inside = shared_models / "shadow.gguf"
        for made in (link, inside):
            subprocess.run([*admin, "ln", "-s", "/etc/shadow", str(made)], check=True, timeout=30)
            assert made.is_symlink() and made.lstat().st_uid == ADMIN_UID
        answers = {
            path: call_as(python_for_nobody, access_daemon, admin, "model.load", {"path": path})
            for path in ("/etc/shadow", str(link), str(inside), "/root/no-such-model.gguf")
        }
    finally:
        shutil.rmtree(home)
    secret = Path("/etc/shadow").read_text().split(":", 1)[0]
    messages = set()
    for path, answer in answers.items():
        error = answer["error"]
        assert error["data"]["name"] == "PERMISSION_DENIED", (path, answer)
        assert error["data"]["path"] == path
        text = json.dumps(error)
        assert f"{secret}:" not in text and "GGUF" not in text
        messages.add(error["message"])
    # The same words whether the file exists or not.
    assert len(messages) == 1
    status = call_as(python_for_nobody, access_daemon, admin, "model.status", {})["result"]
    assert status["state"] == "ready"
    assert status["path"] == model_path
    assert status["last_error"] is None


def read_lines(proc: subprocess.Popen[str], count: int) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    return [json.loads(proc.stdout.readline()) for _ in range(count)]


def test_a_reader_flood_leaves_room_for_an_admin(
    access_daemon: DaemonProcess,
    groups: Groups,  # noqa: F811
    python_for_nobody: str,  # noqa: F811
) -> None:
    d = access_daemon
    short = {"prompt": COUNTING_PROMPT, "max_tokens": 2, "temperature": 0, "stream": True}
    # An admin's long request holds the runner while the readers flood the queue.
    held = Background(
        d.socket_path,
        "inference.generate",
        {"prompt": COUNTING_PROMPT, "max_tokens": 3000, "temperature": 0, "stream": True},
    )
    wait_for(lambda: len(held.stream) >= 2)
    floods: list[subprocess.Popen[str]] = []
    try:
        seen: dict[int, list[dict[str, Any]]] = {}
        for uid, count in zip(READERS, (12, 3, 3, 1), strict=True):
            proc = flood(python_for_nobody, d, as_user(uid, groups.socket_gid), count, short)
            floods.append(proc)
            seen[uid] = read_lines(proc, count)
        first, second, third, fourth = (seen[uid] for uid in READERS)
        for lines in (first, second, third):
            assert sum("queued" in line for line in lines) == 2
            refused = [line["error"]["data"] for line in lines if "error" in line]
            assert all(r["name"] == "QUEUE_FULL" and r["scope"] == "user" for r in refused)
        # Six places taken by readers; the last two are kept for admins.
        (only,) = fourth
        assert only["error"]["data"]["scope"] == "queue"
        admin_user = as_user(ADMIN_UID, groups.socket_gid, groups.admin_gid)
        admin = flood(python_for_nobody, d, admin_user, 1, short)
        floods.append(admin)
        (queued,) = read_lines(admin, 1)
        assert queued["position"] == 7
        # A reader sees their own requests, and the others only as counts.
        view = call_as(
            python_for_nobody, d, as_user(READERS[0], groups.socket_gid), "model.status", {}
        )["result"]
        mine = {line["queued"] for line in first if "queued" in line}
        assert {q["request_id"] for q in view["queue"]} == mine
        assert {q["uid"] for q in view["queue"]} == {READERS[0]}
        assert view["hidden"] == {"queued": 5, "in_flight": 1}
        assert view["in_flight"] is None
        d.call("inference.cancel", {"request_id": held.request_id()})
        assert held.join()["stop_reason"] == "cancelled"
        (done,) = read_lines(admin, 1)
        assert done["result"]["stop_reason"] == "length"
    finally:
        for proc in floods:
            proc.wait(CLI_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()
