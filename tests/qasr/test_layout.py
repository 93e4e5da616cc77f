"""Data flows one way: serve -> engine -> scheduler and kernels. Checked on every import statement of the source
(imports inside functions included), so a shortcut the other way fails here before it reaches a reader."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# package -> the qasr packages it may import (besides itself and the root's config_flags)
MAY_IMPORT = {
    "scheduler": set(),
    "kernels": set(),
    "engine": {"scheduler", "kernels"},
    "serve": {"engine", "scheduler"},
    "benchmarks": {"engine", "scheduler", "kernels", "serve", "cli"},
}
TORCH_FREE = ("scheduler", "serve")  # the scheduler knows no tensors, the server never touches them


def imports(package: str) -> dict[str, set[str]]:
    """Imported module name -> the files of `package` that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_only_downstream(package: str) -> None:
    found = imports(package)
    allowed = {package, "config_flags"} | MAY_IMPORT[package]
    wrong = {name: files for name, files in found.items()
             if name.startswith("qasr.") and name.split(".")[1] not in allowed}
    assert not wrong, f"{package} imports {wrong}"
    assert any(name.startswith(f"qasr.{package}") for name in found) or package in ("scheduler",)


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_packages(package: str) -> None:
    found = imports(package)
    assert not {name for name in found if name.split(".")[0] in ("torch", "triton")}


def test_nothing_imports_the_source_folders_bare() -> None:
    for package in MAY_IMPORT:
        bare = {name for name in imports(package) if name.split(".")[0] in MAY_IMPORT}
        assert not bare, f"{package}: {bare}"
