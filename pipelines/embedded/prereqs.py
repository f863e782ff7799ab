"""Checks for the programs the embedded stack needs, with messages that say how to fix them."""

from __future__ import annotations

import re
import shutil
import subprocess

from lakeserve.errors import ComponentError

_FIX = {
    "java": "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless) or put it on PATH",
    "mvn": "install Apache Maven 3.6+ (Debian: apt-get install maven) or put it on PATH",
    "go": "install Go 1.26+ (https://go.dev/dl) or put it on PATH: it builds SeaweedFS, the object store of the tests",
}


def require_java(minimum: int = 17) -> str:
    """Path of ``java`` if it is version ``minimum`` or newer, else a ComponentError saying why."""
    java = _which("java")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise ComponentError("java", f"cannot read the version of {java}: {out.stderr.strip()[:200]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < minimum:
        raise ComponentError("java", f"Kafka 4 and Spark 4 need Java {minimum}+, found {major}: {_FIX['java']}")
    return java


def require_maven() -> str:
    """Path of ``mvn``, else a ComponentError saying how to install it."""
    return _which("mvn")


def require_go() -> str:
    """Path of ``go``, else a ComponentError saying how to install it."""
    return _which("go")


def _which(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise ComponentError(program, f"`{program}` was not found on PATH: {_FIX[program]}")
    return path
