"""Why an archive is refused: kept apart from `archive`, which brings tarfile
and gzip, so the service can name these without importing it."""

from __future__ import annotations

from cortexd.protocol import CortexError, ErrorCode


class ArchiveRejected(CortexError):
    """The archive failed verification; nothing was changed."""

    code = ErrorCode.INVALID_PARAMS

    def __init__(self, reason: str) -> None:
        super().__init__(f"backup archive refused: {reason}", reason=reason)


class ArchiveUnsigned(ArchiveRejected):
    """The archive is not signed with this host's key (made elsewhere, or edited)."""


class ArchiveTooLarge(CortexError):
    """An archive over `backup.max_archive_bytes`."""

    code = ErrorCode.TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the archive ({size} bytes) exceeds backup.max_archive_bytes ({limit})",
            size=size,
            limit=limit,
        )
