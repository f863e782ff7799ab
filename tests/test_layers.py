"""The import layers of DESIGN.md hold: every import of a lakeserve module points down (or within
its own folder), and no lakeserve import hides in a function, except where the CLI loads a
subcommand. Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
LAYERS = {  # bottom up
    "lakeserve.errors": 0,
    "lakeserve.redact": 0,
    "lakeserve.features": 1,
    "lakeserve.scoring": 2,
    "lakeserve.monitoring": 3,
    "lakeserve.pipelines": 4,
    "lakeserve.jobs": 5,
    "lakeserve.settings": 6,
    "lakeserve.cli": 6,
    "lakeserve.console": 6,
    "lakeserve.secret_env": 6,
    "lakeserve.one_host": 6,
    "lakeserve.k8s_scaling": 6,
    "lakeserve.k8s": 6,
    "lakeserve.__main__": 6,
}
LAZY_ALLOWED = {"lakeserve.cli"}  # the edge may load a subcommand lazily


def modules() -> dict[str, Path]:
    found = {f"lakeserve.{p.stem}": p for p in (ROOT / "lakeserve").glob("*.py") if p.stem != "__init__"}
    for folder in ("features", "scoring", "monitoring", "pipelines", "jobs"):
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(("lakeserve", *parts)).removesuffix(".__init__")] = path
    return found


def layer(module: str) -> int:
    for prefix, level in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} is in no layer")


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported lakeserve module, whether the import is inside a function), type-only ones left out."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, in_function, True)
                continue
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("lakeserve"):
                names = [child.module] if child.module != "lakeserve" else [f"lakeserve.{a.name}" for a in child.names]
                found.extend((n, in_function) for n in names if not type_only or in_function)
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names if a.name.startswith("lakeserve."))
            visit(child, inner, type_only)

    visit(tree, False, False)
    return found


def test_every_import_points_down_the_layers() -> None:
    upward = []
    for module, path in modules().items():
        for target, _ in imports(path):
            if target in ("lakeserve", "lakeserve.errors") or layer(target) <= layer(module):
                continue
            upward.append(f"{path.relative_to(ROOT)}: imports {target}")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_no_lakeserve_import_hides_in_a_function() -> None:
    hidden = [
        f"{path.relative_to(ROOT)}: {target}"
        for module, path in modules().items()
        if module not in LAZY_ALLOWED
        for target, in_function in imports(path)
        if in_function
    ]
    assert not hidden, "lakeserve imports inside functions (import at the top, or move the code):\n" + "\n".join(hidden)


def test_the_folders_are_one_namespace_through_links() -> None:
    for folder in ("features", "scoring", "monitoring", "pipelines", "jobs"):
        link = ROOT / "lakeserve" / folder
        assert link.is_symlink(), link
        assert link.resolve() == (ROOT / folder).resolve(), link
