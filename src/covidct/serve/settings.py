"""The service's limits (:class:`ServeSettings`), checked when made: what ``covidct serve`` options set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    """Service limits. Sizes in MiB, retention in minutes; ``token`` None = no authentication."""

    token: str | None = None
    max_upload_mb: float = 1024.0
    workers: int = 1
    max_pending: int = 32
    retention_minutes: float = 60.0
    work_dir: Path | None = None
    max_unzipped_mb: float = 4096.0
    max_zip_files: int = 10000
    #: One member of a zip (or a gzip upload) may not expand past this (MiB) ...
    max_zip_member_mb: float = 2048.0
    #: ... nor, past 16 MiB, more than this many times its compressed size (DICOM deflates 2-10x).
    max_zip_ratio: float = 100.0
    #: Keep jobs in ``work_dir/jobs`` across restarts (accepted uploads are on disk with their state before
    #: 202; a restart resumes them); without it each start has a fresh folder, removed at shutdown.
    durable: bool = False
    #: Finished studies kept on disk in all (MiB): past it the oldest are deleted before their retention ends.
    max_kept_mb: float = 10240.0

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_unzipped_mb <= 0 or self.max_zip_member_mb <= 0:
            raise ValueError("upload and unzipped size limits must be positive (MiB)")
        if self.max_kept_mb <= 0:
            raise ValueError(f"the storage limit must be positive MiB, got {self.max_kept_mb}")
        if self.max_zip_ratio <= 1:
            raise ValueError(f"the compression ratio limit must be above 1, got {self.max_zip_ratio}")
        if self.workers < 1 or self.max_pending < 1 or self.max_zip_files < 1:
            raise ValueError("workers, max_pending and max_zip_files must be >= 1")
        if self.retention_minutes <= 0:
            raise ValueError(f"retention must be positive minutes, got {self.retention_minutes}")
        if self.durable and self.work_dir is None:
            raise ValueError("durable jobs need a work_dir (--work-dir) to find them again after a restart")
        if self.token is not None and len(self.token.strip()) < 8:
            raise ValueError("the bearer token must be at least 8 characters")
