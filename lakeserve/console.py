"""What a person running ``lakeserve demo`` sees: its steps and its report, not library noise.

:func:`quiet` points the process's standard output and error (file descriptors 1 and 2) at a log
file for as long as it lasts, so everything the libraries and the processes started meanwhile
print lands there: Python logging, kafka-python, Feast and MLflow warnings, the Spark JVM and its
Python workers, Ivy's resolution, the scoring workers, a Rust panic of delta-rs. What the job
itself has to say goes to the terminal through the :class:`Console` it yields. ``--verbose``
skips the redirection and logs to the terminal as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from lakeserve.redact import RedactingFilter


class Console:
    """Step lines with their timing, a progress bar on a terminal, and plain lines."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._started: float | None = None
        self._step = ""

    def line(self, text: str = "") -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def step_started(self, name: str) -> None:
        self._step, self._started = name, time.monotonic()
        if self._tty:
            self._out.write(f"  {name} ...")
            self._out.flush()

    def progress(self, done: int, total: int) -> None:
        """A bar for a long step, on a terminal only (a log or CI output keeps one line per step)."""
        if not self._tty or total <= 0:
            return
        filled = int(30 * done / total)
        self._out.write(f"\r  {self._step} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        self._out.flush()

    def step_done(self, summary: str = "") -> None:
        seconds = time.monotonic() - (self._started or time.monotonic())
        text = f"  {self._step:<14} {seconds:6.1f} s" + (f"   {summary}" if summary else "")
        self._out.write(("\r\033[K" if self._tty else "") + text + "\n")
        self._out.flush()


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[Console]:
    """Standard output and error into ``log_file`` (appended); a Console on the real terminal."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), write_through=True)
    with log_file.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _log_to(sys.stderr, logging.INFO)
        try:
            yield Console(terminal)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
            _log_to(sys.stderr, logging.WARNING)  # what libraries say at exit (py4j, ...) stays quiet


def verbose() -> Console:
    """The terminal as it is, with lakeserve's and the libraries' logs on it."""
    _log_to(sys.stderr, logging.INFO)
    return Console(sys.stdout)


def _log_to(stream: TextIO, level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())  # credentials in locations are masked
    root.addHandler(handler)
    root.setLevel(level)
