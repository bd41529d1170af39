"""Which configuration files a backup or an update snapshot keeps.

Both archive the same files and restore them through `cortexd.config.restore`;
the composition root tells each which files the running daemon loaded
(`ConfigTargets`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cortexd.config.restore import Target

CONFIG_DIR = "/etc/cortex"
MAX_CONFIG_FILES = 256
# The largest configuration file an archive holds (and a restore reads back).
MAX_CONFIG_MEMBER_BYTES = 4 << 20


# Called off the loop (it imports cortexd.config.restore on first use).
ConfigTargets = Callable[[], "list[Target]"]


@dataclass(slots=True)
class CollectedFiles:
    """The files an archive or snapshot keeps, and what it leaves out and why."""

    files: list[str] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)


def collect_config(targets: list[Target], config_dir: str = CONFIG_DIR) -> CollectedFiles:
    """What an archive or snapshot keeps; blocking (walks directories).

    First the configuration files of `targets` (daemon.conf, the rules file,
    wherever they are), then each plugin of the plugins directory, whole or
    not at all (`plugintree.plugin_files`), then the rest of /etc/cortex.
    Restore writes back only the first two kinds; the rest (certificates,
    say) is kept for root to take out of the archive by hand. A file larger
    than an archive member may be, which would make the archive impossible
    to restore, is left out and listed instead.
    """
    # Restore's modules load with the first archive or snapshot (a worker thread).
    from cortexd.config.plugintree import SKIPPED_DIRS, PluginTree, plugin_files

    found = CollectedFiles()
    trees = [t for t in targets if isinstance(t, PluginTree)]
    found.files = [t.path for t in targets if not isinstance(t, PluginTree)]
    for tree in trees:
        plugins = plugin_files(tree.directory, MAX_CONFIG_FILES - len(found.files))
        found.files.extend(plugins.files)
        found.left_out.extend(plugins.left_out)
    kept = set(found.files)
    skipped_trees = {os.path.abspath(t.directory) for t in trees}
    if not os.path.isdir(config_dir):
        return found
    for root, dirs, names in os.walk(config_dir):
        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED_DIRS and os.path.join(root, d) not in skipped_trees
        )
        for name in sorted(names):
            path = os.path.join(root, name)
            if path in kept:
                continue
            if len(found.files) >= MAX_CONFIG_FILES:
                found.left_out.append(
                    {"path": root, "reason": f"a backup holds at most {MAX_CONFIG_FILES} files"}
                )
                return found
            if _file_size(path) > MAX_CONFIG_MEMBER_BYTES:
                found.left_out.append(
                    {
                        "path": path,
                        "reason": f"larger than {MAX_CONFIG_MEMBER_BYTES} bytes",
                    }
                )
                continue
            found.files.append(path)
    return found


def config_files(targets: list[Target], config_dir: str = CONFIG_DIR) -> list[str]:
    """The files of `collect_config`."""
    return collect_config(targets, config_dir).files


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
