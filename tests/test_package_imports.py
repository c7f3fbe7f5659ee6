"""What the package's modules may import: nothing from scripts/ (thin entry points into the ``ssmsteer``
CLI), and no private name (``_name``) of another package; what is needed is public, with a docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("lm_eval_ssmsteer", "scripts", "benchmarks") for p in (ROOT / folder).rglob("*.py")
)
SCRIPT_MODULES = {p.stem for p in (ROOT / "scripts").glob("*.py")}
# the package's import watcher: the `.pth` start-up file names the same module
ALLOWED_PRIVATE = {("lm_eval_ssmsteer/__init__.py", "lm_eval_ssmsteer.lmeval._autoload")}


def _imports(path: Path):
    """(module, name or None) of every import in ``path`` (the package imports absolutely)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import"
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_imports_from_scripts(path):
    text = path.read_text()
    assert not re.search(r"sys\.path\.(insert|append)\([^)]*scripts", text), "puts scripts/ on sys.path"
    imported = {module.split(".")[0] for module, _ in _imports(path)}
    assert not imported & SCRIPT_MODULES, f"imports a script: {imported & SCRIPT_MODULES}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_name_is_imported_from_another_package(path):
    here = ".".join(path.relative_to(ROOT).parent.parts)
    for module, name in _imports(path):
        full = module if name is None else f"{module}.{name}"
        private = [part for part in full.split(".") if part.startswith("_") and not part.startswith("__")]
        if not private or not full.startswith("lm_eval_ssmsteer"):
            continue
        owner = full[: full.index(private[0])].rstrip(".")
        if owner != here and (path.relative_to(ROOT).as_posix(), full) not in ALLOWED_PRIVATE:
            pytest.fail(f"{path.relative_to(ROOT)} imports the private {full}")
