"""A child process lakeserve owns: started detached, found again by its pid file, stopped cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lakeserve.errors import ComponentError


class ManagedProcess:
    """One long-running program with a pid file and a log file under ``workdir``.

    The process runs in its own session, so Ctrl-C in a terminal reaches lakeserve, which then
    stops the components in order instead of all of them dying at once.
    """

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.pid_file = workdir / f"{name}.pid"
        self.log_file = workdir / f"{name}.out"

    def pid(self) -> int | None:
        """The pid of the running process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if _alive(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        """Start ``argv`` detached; returns its pid. Refuses if one is already running."""
        running = self.pid()
        if running is not None:
            raise ComponentError(self.name, f"already running as pid {running} ({self.pid_file})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ComponentError(self.name, f"cannot start {argv[0]}: {exc}") from exc
        self.pid_file.write_text(str(proc.pid))
        return proc.pid

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``check`` (a real client call) until it returns True; fail with the log tail."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ComponentError(self.name, f"exited while starting; last log lines:\n{self.log_tail()}")
            if check():
                return
            time.sleep(delay)  # back-off between readiness probes, never instead of one
            delay = min(delay * 2, 0.5)
        raise ComponentError(self.name, f"not {what} after {timeout_s:.0f} s; last log lines:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, wait, then SIGKILL. Returns whether a process was running."""
        pid = self.pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True
