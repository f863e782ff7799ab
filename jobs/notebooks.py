"""Execute the analysis notebooks against the tables of one settings tree.

Each notebook reads ``LAKESERVE_CONFIG`` in its first cell; the settings are written to a file
for it, and the executed copies (with their outputs and plots) are saved in ``out_dir``. A cell
that fails raises :class:`~lakeserve.errors.ComponentError` naming the notebook and the cell.
"""

from __future__ import annotations

import os
from pathlib import Path

from lakeserve.errors import ComponentError
from lakeserve.jobs.settings import JobSettings
from lakeserve.pipelines.settings import write_settings


def notebooks_dir() -> Path:
    """``notebooks/`` of the source tree (the folder beside ``jobs/``)."""

    return Path(__file__).resolve().parent.parent / "notebooks"


def execute_notebooks(settings: JobSettings, out_dir: Path, source: Path | None = None,
                      timeout_s: int = 600) -> list[Path]:
    """Run every ``*.ipynb`` of ``source`` in order; returns the executed copies."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = source or notebooks_dir()
    if not source.is_dir():
        raise ComponentError("notebooks", f"no notebooks folder at {source}")
    config = write_settings(settings, out_dir / "settings.yaml")
    executed = []
    saved = os.environ.get("LAKESERVE_CONFIG")
    os.environ["LAKESERVE_CONFIG"] = str(config)  # the kernel inherits it
    try:
        for path in sorted(source.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
            client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                                    resources={"metadata": {"path": str(out_dir)}})
            try:
                client.execute()
            except CellExecutionError as exc:
                raise ComponentError("notebooks", f"{path.name} failed: {str(exc)[:2000]}") from exc
            target = out_dir / path.name
            nbformat.write(nb, target)  # type: ignore[no-untyped-call]
            executed.append(target)
    finally:
        if saved is None:
            os.environ.pop("LAKESERVE_CONFIG", None)
        else:
            os.environ["LAKESERVE_CONFIG"] = saved
    return executed
