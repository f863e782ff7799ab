"""Reading a subprocess's output line by line without blocking the test: one reader thread."""

from __future__ import annotations

import queue
import subprocess
import threading


def output_lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """Every line ``proc`` writes to its stdout, then None once it closes it."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or []:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines
