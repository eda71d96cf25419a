"""The dependency direction: chunkstore imports neither fs nor node; fs and node not each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "chunkstore": {"fs", "node", "lanvault"},
    "node": {"fs", "lanvault"},
    "fs": {"node", "lanvault"},
}
ASYNC_LIBS = {"trio", "pyfuse3", "anyio", "asyncio"}


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} is empty"
    for path in files:
        bad = imported_top_levels(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_chunkstore_is_synchronous() -> None:
    for path in sorted((ROOT / "chunkstore").rglob("*.py")):
        bad = imported_top_levels(path) & ASYNC_LIBS
        assert not bad, (
            f"{path.relative_to(ROOT)} imports {sorted(bad)}: chunkstore stays synchronous"
        )
        assert "async def" not in path.read_text()


def test_packages_resolve_to_this_checkout() -> None:
    # fs, node and chunkstore share names with unrelated PyPI projects; ours must win.
    import chunkstore
    import fs
    import node

    for module in (chunkstore, fs, node):
        assert Path(module.__file__ or "").resolve().parent.parent == ROOT
