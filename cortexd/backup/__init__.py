"""Backup and restore of the daemon's state databases and configuration."""

from cortexd.backup.archive import ArchiveRejected, ArchiveTooLarge, build, verify
from cortexd.backup.service import BackupService

__all__ = ["ArchiveRejected", "ArchiveTooLarge", "BackupService", "build", "verify"]
