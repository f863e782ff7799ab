"""Worker entry points for the supervisor tests (module-level, so spawned processes can import them)."""

from __future__ import annotations

from lakeserve.pipelines.supervisor import WorkerLink
from lakeserve.settings import Settings


def idle_worker(settings: Settings, link: WorkerLink) -> None:
    """Reports itself assigned, then does nothing until told to stop."""
    stop = link.stop_event()
    link.assigned()
    stop.wait()
