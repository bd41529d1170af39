"""Per-user defaults for a daemon run by someone other than root (`make run`).

Real processes under a real unprivileged uid (setpriv --reuid=65534), with
the environment under the test's control: the socket goes to
$XDG_RUNTIME_DIR/cortex.sock, else to a private /tmp/cortex-<uid>/; state to
$XDG_STATE_HOME/cortex, else ~/.local/state/cortex; and `cortexctl` finds the
same socket with no flags.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml

from cortexd.config import ServerConfig
from cortexd.server import bind_socket, remove_socket
from cortexd.server.transport import SocketPathUnsafe
from tests.daemon import NotifyListener, short_tmpdir
from tests.security.accounts import readable_install

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
WAIT = 30.0

_can_switch_user = pytest.mark.skipif(
    SETPRIV is None or os.getuid() != 0, reason="needs root and setpriv to act as another user"
)


def needs_setpriv(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that runs processes as another uid (root and setpriv)."""
    marked: Callable[..., None] = pytest.mark.root(_can_switch_user(test))
    return marked


PROBE = (
    "import json\n"
    "from cortexd.protocol import default_socket_path\n"
    "from cortexd.config.schema import default_state_dir\n"
    "print(json.dumps({'socket': default_socket_path(), 'state': default_state_dir()}))\n"
)


@dataclass(frozen=True)
class NobodyPython:
    """How uid 65534 runs this checkout's code: an interpreter and extra environment."""

    python: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def nobody_python() -> Iterator[NobodyPython]:
    """The test's own interpreter when uid 65534 can run it with the checkout importable;
    otherwise (a checkout under /root, say) a readable copy of the code and its
    dependencies, so these tests run wherever the checkout lives."""
    assert SETPRIV is not None
    probe = subprocess.run(
        [
            *(SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"),
            *(sys.executable, "-c", "import cortexd.app, cortexctl.cli"),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd="/",
        check=False,
    )
    if probe.returncode == 0:
        yield NobodyPython(sys.executable, {})
        return
    with readable_install(NOBODY) as (python, path):
        yield NobodyPython(python, {"PYTHONPATH": str(path)})


def as_user(uid: int, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    return subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def defaults_for(uid: int, env: dict[str, str], nobody: NobodyPython) -> dict[str, str]:
    python = nobody.python if uid != 0 else sys.executable
    extra = nobody.env if uid != 0 else {}
    result = as_user(uid, [python, "-c", PROBE], {**env, **extra})
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = orjson.loads(result.stdout)
    return found


@pytest.fixture
def private_dir() -> Iterator[str]:
    path = short_tmpdir("cxu")
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_setpriv
def test_socket_in_xdg_runtime_dir_and_state_in_xdg_state_home(
    private_dir: str, nobody_python: NobodyPython
) -> None:
    found = defaults_for(
        NOBODY,
        {"HOME": "/nonexistent", "XDG_RUNTIME_DIR": private_dir, "XDG_STATE_HOME": "/st"},
        nobody_python,
    )
    assert found == {"socket": f"{private_dir}/cortex.sock", "state": "/st/cortex"}


@needs_setpriv
def test_fallbacks_without_xdg_variables(nobody_python: NobodyPython) -> None:
    found = defaults_for(NOBODY, {"HOME": "/home/someone"}, nobody_python)
    assert found == {
        "socket": f"/tmp/cortex-{NOBODY}/cortex.sock",
        "state": "/home/someone/.local/state/cortex",
    }


@needs_setpriv
def test_a_runtime_dir_that_does_not_exist_falls_back_to_tmp(nobody_python: NobodyPython) -> None:
    found = defaults_for(
        NOBODY, {"HOME": "/h", "XDG_RUNTIME_DIR": "/nonexistent/run"}, nobody_python
    )
    assert found["socket"] == f"/tmp/cortex-{NOBODY}/cortex.sock"


@needs_setpriv
def test_root_uses_the_system_paths(nobody_python: NobodyPython) -> None:
    assert defaults_for(0, {"HOME": "/root", "XDG_RUNTIME_DIR": "/run/user/0"}, nobody_python) == {
        "socket": "/run/cortex.sock",
        "state": "/var/lib/cortex",
    }


# -- the private /tmp directory -------------------------------------------------


@pytest.fixture
def tmp_cortex_dir() -> Iterator[str]:
    """A fresh /tmp/cortex-… path (the rule applies to that prefix), removed after."""
    path = f"/tmp/cortex-test-{uuid.uuid4().hex[:8]}"
    yield path
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _bind(directory: str) -> None:
    bound = bind_socket(ServerConfig(socket_path=os.path.join(directory, "cortex.sock")))
    bound.sock.close()
    remove_socket(bound)


def test_the_private_directory_is_created_0700(tmp_cortex_dir: str) -> None:
    _bind(tmp_cortex_dir)
    st = os.lstat(tmp_cortex_dir)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == os.getuid()


@needs_setpriv
def test_someone_elses_directory_is_refused(tmp_cortex_dir: str) -> None:
    os.mkdir(tmp_cortex_dir, 0o700)
    os.chown(tmp_cortex_dir, NOBODY, NOBODY)
    with pytest.raises(SocketPathUnsafe, match="must be a directory owned by uid"):
        _bind(tmp_cortex_dir)
    assert os.listdir(tmp_cortex_dir) == []


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o702])
def test_a_group_or_world_writable_directory_is_refused(tmp_cortex_dir: str, mode: int) -> None:
    os.mkdir(tmp_cortex_dir)
    os.chmod(tmp_cortex_dir, mode)
    with pytest.raises(SocketPathUnsafe):
        _bind(tmp_cortex_dir)
    assert os.listdir(tmp_cortex_dir) == []


def test_a_symlink_in_place_of_the_directory_is_refused(tmp_cortex_dir: str) -> None:
    target = short_tmpdir()
    try:
        os.symlink(target, tmp_cortex_dir)
        with pytest.raises(SocketPathUnsafe):
            _bind(tmp_cortex_dir)
        assert os.listdir(target) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)


# -- end to end as an ordinary user ------------------------------------------------


@needs_setpriv
def test_an_unprivileged_daemon_and_cortexctl_agree_without_flags(
    private_dir: str, nobody_python: NobodyPython
) -> None:
    workdir = short_tmpdir()
    os.chmod(workdir, 0o755)
    home = os.path.join(private_dir, "home")
    os.mkdir(home)
    os.chown(home, NOBODY, NOBODY)
    notify = NotifyListener(os.path.join(workdir, "notify"))
    os.chmod(notify.path, 0o666)
    config_path = os.path.join(workdir, "daemon.conf")
    Path(config_path).write_text(yaml.safe_dump({"logging": {"target": "stderr"}}))
    env = {
        "HOME": home,
        "XDG_RUNTIME_DIR": private_dir,
        "XDG_STATE_HOME": os.path.join(home, "state"),
        "NOTIFY_SOCKET": notify.path,
    }
    log_path = os.path.join(workdir, "daemon.log")
    assert SETPRIV is not None
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                SETPRIV,
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                nobody_python.python,
                "-m",
                "cortexd",
                "--config",
                config_path,
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, **nobody_python.env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            notify.wait_for(lambda m: m.get("READY") == "1", WAIT)
        except TimeoutError:
            raise AssertionError(Path(log_path).read_text()) from None
        expected = os.path.join(private_dir, "cortex.sock")
        st = os.lstat(expected)
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == NOBODY

        client_env = {k: v for k, v in env.items() if k != "NOTIFY_SOCKET"}
        cortexctl = [nobody_python.python, "-m", "cortexctl"]
        result = as_user(
            NOBODY, [*cortexctl, "--json", "config", "show"], {**client_env, **nobody_python.env}
        )
        assert result.returncode == 0, result.stderr
        shown = orjson.loads(result.stdout)
        config = shown.get("config", shown)
        assert config["server"]["socket_path"] == expected
        assert config["state_dir"] == os.path.join(home, "state", "cortex")

        proc.terminate()
        assert proc.wait(WAIT) == 0, Path(log_path).read_text()
        # It removes the socket it created in the user's runtime directory.
        assert not os.path.exists(expected)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        notify.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_cortexctl_reaches_the_system_daemon_when_the_user_runs_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A member of `cortex` on an installed host runs `cortexctl status` with no
    # flags (tests/test_deb_package.py does it for real); `make run` as that
    # user still gets the user's own daemon. Decided per call, on the files.
    from cortexd import protocol

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    system = tmp_path / "cortex.sock"
    monkeypatch.setattr(protocol, "DEFAULT_SYSTEM_SOCKET", str(system))
    monkeypatch.setattr(protocol.os, "getuid", lambda: 1000)
    monkeypatch.delenv("CORTEX_SOCKET", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    own = str(runtime / "cortex.sock")
    assert protocol.client_socket_path() == own  # no daemon at all: the hint names the user's
    system.touch()
    assert protocol.client_socket_path() == str(system)
    (runtime / "cortex.sock").touch()
    assert protocol.client_socket_path() == own
    monkeypatch.setenv("CORTEX_SOCKET", str(tmp_path / "other.sock"))
    assert protocol.client_socket_path() == str(tmp_path / "other.sock")
    monkeypatch.delenv("CORTEX_SOCKET")
    monkeypatch.setattr(protocol.os, "getuid", lambda: 0)
    assert protocol.client_socket_path() == str(system)  # root: always the system socket
