"""Prerequisites are checked with messages that say what is missing and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lakeserve.errors import ComponentError
from lakeserve.pipelines.embedded.prereqs import require_java, require_maven
from lakeserve.pipelines.embedded.seaweedfs import ensure_binary


def test_java_and_maven_found() -> None:
    assert require_java(17).endswith("java")
    assert require_maven().endswith("mvn")


def test_too_old_java_is_reported_with_the_fix() -> None:
    with pytest.raises(ComponentError, match=r"need Java 99\+, found 1\d.*apt-get install openjdk"):
        require_java(99)


def test_missing_program_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ComponentError, match=r"`mvn` was not found on PATH.*apt-get install maven"):
        require_maven()


def test_without_go_the_object_store_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The SeaweedFS binary is built on first use; with no binary cached and no Go, the start fails
    at once, naming Go and where to get it (and nothing is left half-built)."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ComponentError, match=r"`go` was not found on PATH.*go\.dev/dl"):
        ensure_binary(tmp_path / "cache")
    assert not (tmp_path / "cache" / "seaweedfs").exists()
