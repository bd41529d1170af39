"""Storage benchmark: SQLite locking and journal modes for the daemon's databases.

The daemon is the only process that opens its databases, so it can hold them
in exclusive locking mode, where WAL keeps its index in the heap instead of a
memory-mapped `-shm` file (which is what raised SIGBUS on a full tmpfs). This
measures that choice against the alternatives, in the same run, on the alerts
schema with rows like the alert manager writes:

- `wal-shared`: WAL with the shared-memory index (the baseline: the mode the
  daemon used before).
- `wal-exclusive`: WAL with `locking_mode=EXCLUSIVE` (no `-shm` file; no other
  process may open the file while the daemon has it).
- `truncate`: a rollback journal (`journal_mode=TRUNCATE`), normal locking (no
  `-shm` either; other processes may read between transactions).

Each mode: one-row write transactions (the shape of `alerts.raise`), point
reads by id, the `alerts.list` query over 10,000 rows, and open +
`PRAGMA quick_check` of that database (what the daemon does at start). Modes
alternate order round by round; figures are medians over the rounds, and
ratios are against `wal-shared` from the same run.

Run: `python bench/storage.py [--dir DIR] [--rounds 5] [--json]`. `--dir`
picks the filesystem (default: a temporary directory under /var/tmp).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from cortexd.alerts import store
from cortexd.alerts.model import Alert, ListFilter, Severity

MODES: dict[str, tuple[str, ...]] = {
    "wal-shared": ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"),
    "wal-exclusive": (
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=NORMAL",
    ),
    "wal-exclusive-full": (
        "PRAGMA locking_mode=EXCLUSIVE",
        "PRAGMA journal_mode=WAL",
        "PRAGMA synchronous=FULL",
    ),
    "truncate": ("PRAGMA journal_mode=TRUNCATE", "PRAGMA synchronous=NORMAL"),
}
BASELINE = "wal-shared"
WRITES = 2000
READS = 5000
LIST_ROWS = 10_000
LIST_CALLS = 200


def connect(path: str, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    for pragma in MODES[mode]:
        conn.execute(pragma)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    for migration in store.MIGRATIONS:
        for statement in migration.sql.split(";"):
            if statement.strip():
                conn.execute(statement)


def alert(n: int, now: float) -> Alert:
    return Alert(
        id=str(uuid.uuid4()),
        fingerprint=uuid.uuid4().hex,
        source="external",
        severity=Severity.WARNING,
        category="system",
        title=f"bench alert {n}",
        description="a description of about the length operators write " * 2,
        labels={"job": f"bench-{n}", "host": "bench"},
        annotations={},
        state="firing",
        first_seen=now,
        last_seen=now + n,
        count=1,
        host="bench",
    )


def one_round(directory: str, mode: str) -> dict[str, float]:
    path = os.path.join(directory, f"{mode}.db")
    conn = connect(path, mode)
    migrate(conn)
    now = time.time()
    ids: list[str] = []
    started = time.perf_counter()
    for n in range(WRITES):
        row = alert(n, now)
        conn.execute("BEGIN IMMEDIATE")
        store.save(conn, [row])
        conn.execute("COMMIT")
        ids.append(row.id)
    writes = WRITES / (time.perf_counter() - started)
    started = time.perf_counter()
    for n in range(READS):
        store.get(conn, ids[n % len(ids)])
    reads = READS / (time.perf_counter() - started)
    conn.execute("BEGIN IMMEDIATE")
    store.save(conn, [alert(n, now) for n in range(WRITES, LIST_ROWS)])
    conn.execute("COMMIT")
    flt = ListFilter(states=("firing", "acknowledged"), limit=100)
    times = []
    for _ in range(LIST_CALLS):
        begun = time.perf_counter()
        store.select(conn, flt)
        times.append((time.perf_counter() - begun) * 1000)
    conn.close()
    started = time.perf_counter()
    conn = connect(path, mode)
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    opened = (time.perf_counter() - started) * 1000
    conn.close()
    if check != "ok":
        raise RuntimeError(f"{mode}: quick_check said {check}")
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return {
        "writes_per_second": writes,
        "reads_per_second": reads,
        "list_p50_ms": statistics.median(times),
        "open_quick_check_ms": opened,
    }


def filesystem(directory: str) -> str:
    done = subprocess.run(
        ["findmnt", "-no", "FSTYPE", "--target", directory],
        capture_output=True,
        text=True,
        check=False,
    )
    # Stacked mounts list one line each, in mount order: the last is on top.
    lines = done.stdout.split()
    return lines[-1] if lines else "unknown"


def run(directory: str, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    order = list(MODES)
    for n in range(rounds):
        for mode in order if n % 2 == 0 else reversed(order):
            samples[mode].append(one_round(directory, mode))
    medians = {
        mode: {k: statistics.median(s[k] for s in runs) for k in runs[0]}
        for mode, runs in samples.items()
    }
    base = medians[BASELINE]
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": sys.version.split()[0],
            "sqlite": sqlite3.sqlite_version,
            "filesystem": filesystem(directory),
        },
        "rounds": rounds,
        "modes": {
            mode: {
                **{k: round(v, 3 if k.endswith("_ms") else 0) for k, v in figures.items()},
                "vs_baseline": {k: round(v / base[k], 2) for k, v in figures.items()},
            }
            for mode, figures in medians.items()
        },
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{m['cpus']} CPUs, load {m['load_average_1m']}, Python {m['python']}, "
        f"SQLite {m['sqlite']}, {m['filesystem']}; median of {result['rounds']} rounds",
        "",
        "| mode | writes/s | reads/s | list p50 ms | open + quick_check ms |",
        "|---|---|---|---|---|",
    ]
    fmt: dict[str, Callable[[float], str]] = {
        "writes_per_second": lambda v: f"{v:,.0f}",
        "reads_per_second": lambda v: f"{v:,.0f}",
        "list_p50_ms": lambda v: f"{v:.3f}",
        "open_quick_check_ms": lambda v: f"{v:.1f}",
    }
    for mode, figures in result["modes"].items():
        cells = [
            f"{fmt[k](figures[k])} ({figures['vs_baseline'][k]:.2f}x)" for k in fmt if k in figures
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where the databases go (its filesystem is measured)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="cortex-bench-", dir=args.dir or "/var/tmp")
    try:
        result = run(directory, args.rounds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if args.json else markdown(result)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
