"""Snapshots taken before updates: configuration, state copy, package list, old .debs.

Layout of `<state_dir>/snapshots/<id>/` (id like `20261123-120000`):
`meta.json`, `config/<n>` (the configuration files and those of each plugin,
origins in the meta; what was left out in `left_out`),
`state/<name>.db` (online copies through SQLite's backup API), `packages.tsv`
(package, version, architecture) and, for an apply, `debs/` with the .deb of
each version being replaced — from apt's cache or the releases the daemon
downloaded, else rebuilt from the installed files (`repack.py`: dpkg-repack
when installed) — so a rollback can reinstall offline.
All of it is blocking and runs in worker threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from cortexd.host.commands import CommandFailed
from cortexd.host.files import sha256_file
from cortexd.protocol import NotFound
from cortexd.store.copy import copy_database, state_databases
from cortexd.updates.apt import Apt, Installed

DAY = 86400.0


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class Snapshots:
    """The snapshots under one directory."""

    def __init__(self, root: str, apt: Apt, kept_dirs: Sequence[str] = ()) -> None:
        self.root = root
        self.apt = apt
        # Directories beside apt's cache where a .deb may still be (releases
        # the daemon downloaded), looked in before rebuilding one.
        self.kept_dirs = tuple(kept_dirs)

    def _new_id(self, now: float) -> str:
        base = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        candidate, n = base, 1
        while os.path.exists(os.path.join(self.root, candidate)):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def take(
        self,
        state_dir: str,
        config_files: Sequence[str],
        *,
        reason: str,
        replacing: Sequence[Installed] = (),
        now: float | None = None,
        copier: Callable[[str, str], None] = copy_database,
        left_out: Sequence[dict[str, str]] = (),
    ) -> dict[str, Any]:
        """Write a new snapshot; returns its meta (`copier` copies each database;
        `left_out`, what the caller did not keep and why, goes into it as it is)."""
        created = time.time() if now is None else now
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        snap_id = self._new_id(created)
        work = os.path.join(self.root, f".{snap_id}.tmp")
        os.makedirs(os.path.join(work, "config"), mode=0o700)
        os.makedirs(os.path.join(work, "state"), mode=0o700)
        try:
            config = []
            for n, path in enumerate(dict.fromkeys(os.path.abspath(p) for p in config_files)):
                if not os.path.isfile(path):
                    continue
                target = os.path.join(work, "config", str(n))
                shutil.copyfile(path, target)
                config.append(
                    {
                        "name": f"config/{n}",
                        "origin": path,
                        "mode": os.stat(path).st_mode & 0o7777,
                        "sha256": sha256_file(target),
                    }
                )
            databases = []
            for db in state_databases(state_dir):
                copier(db, os.path.join(work, "state", os.path.basename(db)))
                databases.append(os.path.basename(db))
            installed = self.apt.installed()
            lines = "".join(f"{i.package}\t{i.version}\t{i.arch}\n" for i in installed)
            _write(os.path.join(work, "packages.tsv"), lines.encode())
            debs = self._save_debs(work, replacing)
            meta = {
                "id": snap_id,
                "created": created,
                "reason": reason,
                "config": config,
                "left_out": list(left_out),
                "databases": databases,
                "packages": len(installed),
                "debs": debs,
            }
            _write(os.path.join(work, "meta.json"), orjson.dumps(meta, option=orjson.OPT_INDENT_2))
            os.replace(work, os.path.join(self.root, snap_id))
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return meta

    def _save_debs(self, work: str, replacing: Sequence[Installed]) -> list[dict[str, Any]]:
        if not replacing:
            return []
        debs_dir = os.path.join(work, "debs")
        os.makedirs(debs_dir, mode=0o700)
        saved = []
        for item in replacing:
            entry: dict[str, Any] = {"package": item.package, "version": item.version}
            cached = self.apt.cached_deb(item)
            kept = self._kept(item)
            if cached or kept:
                found = cached or kept
                assert found is not None
                shutil.copy2(found, debs_dir)
                entry.update(
                    file=os.path.basename(found), source="apt-cache" if cached else "downloaded"
                )
            else:
                # Imported here, off the loop: rebuilding a package is rare, and
                # its tempfile would otherwise stay loaded in the idle daemon.
                from cortexd.updates.repack import repack

                try:
                    built, how = repack(item.package, item.version, item.arch or "all", debs_dir)
                except (CommandFailed, OSError, subprocess.SubprocessError) as exc:
                    entry.update(file=None, source=f"could not rebuild: {exc}")
                else:
                    entry.update(file=os.path.basename(built), source=how)
            saved.append(entry)
        return saved

    def _kept(self, item: Installed) -> str | None:
        name = f"{item.package.split(':')[0]}_{item.version.replace(':', '%3a')}_{item.arch}.deb"
        for directory in self.kept_dirs:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
        return None

    def all(self) -> list[dict[str, Any]]:
        """Every snapshot's meta, newest first."""
        out = []
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(self.root, name, "meta.json"), "rb") as fh:
                    out.append(orjson.loads(fh.read()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return sorted(out, key=lambda m: (m["created"], m["id"]), reverse=True)

    def get(self, snap_id: str | None) -> dict[str, Any]:
        """One snapshot's meta; None means the newest.

        Raises:
            NotFound: no such snapshot (or none at all).
        """
        found = self.all()
        if snap_id is None:
            if not found:
                raise NotFound("there are no snapshots")
            return found[0]
        for meta in found:
            if meta["id"] == snap_id:
                return meta
        raise NotFound(f"no snapshot {snap_id!r}", id=snap_id)

    def path(self, snap_id: str) -> str:
        return os.path.join(self.root, snap_id)

    def packages(self, snap_id: str) -> dict[str, str]:
        out = {}
        with open(os.path.join(self.root, snap_id, "packages.tsv"), encoding="utf-8") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 2:
                    out[parts[0]] = parts[1]
        return out

    def prune(self, retention_days: float, now: float | None = None) -> list[str]:
        """Delete snapshots older than the retention, always keeping the newest."""
        horizon = (time.time() if now is None else now) - retention_days * DAY
        removed = []
        for meta in self.all()[1:]:
            if meta["created"] < horizon:
                shutil.rmtree(self.path(meta["id"]), ignore_errors=True)
                removed.append(meta["id"])
        for name in os.listdir(self.root) if os.path.isdir(self.root) else []:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    shutil.rmtree(os.path.join(self.root, name))
        return removed


def package_changes(then: dict[str, str], now: dict[str, str]) -> dict[str, Any]:
    """How the installed packages differ from a snapshot's list."""
    changed = [
        {"package": p, "snapshot": then[p], "current": now[p]}
        for p in sorted(then.keys() & now.keys())
        if then[p] != now[p]
    ]
    return {
        "changed": changed,
        "installed_since": sorted(now.keys() - then.keys()),
        "removed_since": sorted(then.keys() - now.keys()),
    }
