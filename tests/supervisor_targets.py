"""Worker entry points for the supervisor tests (module-level, so spawned processes can import them)."""

from __future__ import annotations

from lakeserve.pipelines.supervisor import WorkerLink
from lakeserve.settings import Settings


def idle_worker(settings: Settings, link: WorkerLink) -> None:
    """Reports itself assigned, then does nothing until told to stop."""
    stop = link.stop_event()
    link.assigned()
    stop.wait()


def gated_worker(settings: Settings, link: WorkerLink) -> None:
    """Reports itself assigned only once the file ``<state_dir>/gate`` exists, then idles until stopped."""
    stop = link.stop_event()
    gate = settings.stack.state_dir / "gate"
    while not gate.exists():
        if stop.wait(0.05):
            return
    link.assigned()
    stop.wait()
