"""Keep an inference table fast to append to and to read: compact, checkpoint, vacuum.

The service appends small batches all day; each one is a file and a log entry, and commit
and read cost grow with both. :func:`optimize_table` (``lakeserve tables optimize``, or the
scheduled maintenance job) rewrites small files into large ones, writes a log checkpoint,
deletes data files unreferenced for longer than the retention, and drops expired log files.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from lakeserve.errors import ComponentError, ConfigError


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one maintenance run did."""

    uri: str
    version: int  # table version after the run
    files_before: int  # live data files before compaction
    files_after: int  # live data files after compaction
    files_compacted: int  # small files replaced by compaction
    files_written: int  # files compaction wrote
    files_vacuumed: int  # unreferenced files deleted from storage


def optimize_table(
    uri: str, *, retention_hours: int = 168, storage_options: dict[str, str] | None = None
) -> MaintenanceReport:
    """Compact, checkpoint, vacuum (deleting for real, retention enforced), clean up the log.

    ``retention_hours`` may not be lower than the table's ``delta.deletedFileRetentionDuration``
    (one week by default): readers still on an older version would lose their files.
    """
    if retention_hours < 0:
        raise ConfigError(f"retention_hours must be >= 0, got {retention_hours}")
    try:
        table = DeltaTable(uri, storage_options=storage_options)
        before = len(table.file_uris())
        metrics = table.optimize.compact()
        table.create_checkpoint()
        vacuumed = table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=True
        )
        table.cleanup_metadata()
        table.update_incremental()
        after = len(table.file_uris())
    except (DeltaError, OSError) as exc:
        raise ComponentError("delta", f"could not optimize {uri}: {exc}") from exc
    return MaintenanceReport(
        uri=uri,
        version=table.version(),
        files_before=before,
        files_after=after,
        files_compacted=int(metrics.get("numFilesRemoved", 0)),
        files_written=int(metrics.get("numFilesAdded", 0)),
        files_vacuumed=len(vacuumed),
    )
