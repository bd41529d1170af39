"""Package updates: check, snapshots, apply and rollback."""

from cortexd.updates.apt import Apt
from cortexd.updates.service import UpdateService
from cortexd.updates.snapshots import Snapshots, package_changes

__all__ = ["Apt", "Snapshots", "UpdateService", "package_changes"]
