"""Config test fixtures: a private layout of system and user files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortexd.config import ConfigFiles, LoadedConfig, load_config


@dataclass
class Layout:
    """A fake root: a system file and a HOME with ~/.cortex/daemon.conf."""

    root: Path
    system: Path
    home: Path

    @property
    def user(self) -> Path:
        return self.home / ".cortex" / "daemon.conf"

    def write_system(self, data: Any) -> Path:
        return _write(self.system, data)

    def write_user(self, data: Any) -> Path:
        return _write(self.user, data)

    def load(
        self,
        env: dict[str, str] | None = None,
        overrides: dict[str, Any] | None = None,
        explicit: str | None = None,
    ) -> LoadedConfig:
        environ = {"HOME": str(self.home), **(env or {})}
        files = ConfigFiles(explicit=explicit, system=str(self.system))
        return load_config(overrides=overrides, environ=environ, files=files)


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """System file under tmp_path/etc, HOME at tmp_path/home; nothing process-wide."""
    home = tmp_path / "home"
    home.mkdir()
    return Layout(root=tmp_path, system=tmp_path / "etc" / "cortex" / "daemon.conf", home=home)
