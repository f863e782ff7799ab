"""`lakeserve demo` shows its steps, not library noise: inside ``quiet`` everything written to the
process's stdout and stderr (logging, prints, child processes such as the JVM) lands in the log
file, and the Console still reaches the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, subprocess, sys
    from pathlib import Path
    from lakeserve.console import quiet

    with quiet(Path(sys.argv[1])) as console:
        console.line("lakeserve demo")
        console.step_started("stack up")
        logging.getLogger("kafka.net").error("ECONNREFUSED while the broker starts")
        print("a library prints")
        subprocess.run(["sh", "-c", "echo a child process writes >&2"], check=True)
        console.step_done("kafka on 127.0.0.1:9092")
    print("after: the terminal again")
    """
)


def test_quiet_sends_everything_but_the_console_to_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "demo.log"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(log_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = done.stdout.splitlines()
    assert shown[0] == "lakeserve demo"
    assert shown[1].startswith("  stack up")  # one line per step, with its time and summary
    assert shown[1].endswith(" s   kafka on 127.0.0.1:9092")
    assert shown[2] == "after: the terminal again"
    assert done.stderr == ""
    logged = log_file.read_text()
    assert "ERROR kafka.net: ECONNREFUSED" in logged
    assert "a library prints" in logged
    assert "a child process writes" in logged
