"""The /proc readers the checks use, against the kernel's files and psutil's reading of them."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cortexd.host import procfs


def test_memory_and_swap_match_psutil() -> None:
    total, available = procfs.memory()
    vm = psutil.virtual_memory()
    assert total == vm.total
    # Both read MemAvailable; the two reads are a moment apart.
    assert abs(available - vm.available) < 64 << 20
    swap_total, swap_used = procfs.swap()
    sw = psutil.swap_memory()
    assert swap_total == sw.total
    assert abs(swap_used - sw.used) < 64 << 20


def test_memory_without_memavailable_counts_the_page_cache(tmp_path: Path) -> None:
    sample = tmp_path / "meminfo"
    sample.write_text(
        "MemTotal:        1000 kB\nMemFree:          100 kB\nBuffers:           50 kB\n"
        "Cached:           250 kB\nSwapTotal:        400 kB\nSwapFree:         300 kB\n"
        "HugePages_Total:       0\n"
    )
    assert procfs.memory(str(sample)) == (1000 * 1024, 400 * 1024)
    assert procfs.swap(str(sample)) == (400 * 1024, 100 * 1024)
    assert procfs.meminfo(str(sample))["HugePages_Total"] == 0


def test_boot_time_matches_psutil() -> None:
    assert abs(procfs.boot_time() - psutil.boot_time()) < 2.0


def test_cpu_times_count_busy_time_as_it_passes() -> None:
    busy, total = procfs.cpu_times()
    assert 0 <= busy <= total
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # burn CPU so busy time must grow
        pass
    busy2, total2 = procfs.cpu_times()
    assert busy2 > busy and total2 > total


def test_cpu_times_leave_out_idle_iowait_and_guest_time(tmp_path: Path) -> None:
    sample = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    sample.write_text(
        "cpu  10 2 3 100 5 1 1 0 7 0\ncpu0 10 2 3 100 5 1 1 0 7 0\nbtime 1700000000\n"
    )
    assert procfs.cpu_times(str(sample)) == (17.0, 122.0)
    assert procfs.boot_time(str(sample)) == 1700000000.0


def test_mounts_match_psutil() -> None:
    ours = {(m.device, m.mountpoint, m.fstype) for m in procfs.mounts()}
    theirs = {(p.device, p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)}
    assert "/" in {m for _, m, _ in ours}
    assert ours == theirs


def test_mount_points_with_spaces_are_unescaped(tmp_path: Path) -> None:
    sample = tmp_path / "mounts"
    sample.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "/dev/sdb1 /media/my\\040disk vfat ro 0 0\n"
        "truncated line\n"
    )
    found = procfs.mounts(str(sample))
    assert [(m.device, m.mountpoint, m.fstype, m.options) for m in found] == [
        ("/dev/sda1", "/", "ext4", "rw,relatime"),
        ("/dev/sdb1", "/media/my disk", "vfat", "ro"),
    ]


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and is not reaped until the test ends."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    yield child.pid
    child.wait()


def test_process_states_count_a_real_zombie(zombie: int) -> None:
    total, zombies = procfs.process_states()
    assert zombies >= 1
    assert total >= zombies + 1  # this process at least
    assert abs(total - len(psutil.pids())) < 50


def test_process_states_read_the_state_after_the_command_name(tmp_path: Path) -> None:
    for pid, comm, state in (("1", "init", "S"), ("7", "a) Z (b", "R"), ("9", "dead", "Z")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(f"{pid} ({comm}) {state} 1 1 1\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "11").mkdir()  # exited between listing and reading: no stat file
    assert procfs.process_states(str(tmp_path)) == (3, 1)
