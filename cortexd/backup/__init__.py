"""Backup and restore of the daemon's state databases and configuration.

`archive` (tarfile, gzip) is imported by the service when an archive is
first made or read, not when the feature starts: most daemons never do.
"""
