"""Every script in scripts/ and benchmarks/ and every ``ssmsteer`` subcommand answers --help: exit 0, a
usage line and the description its module docstring gives (a thin entry point: the help of the command
it runs), and nothing written into the package."""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_ssmsteer.cli import build_parser, main
from lm_eval_ssmsteer.studies.cli import STUDIES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lm_eval_ssmsteer"
SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("scripts", "benchmarks")
    for p in (ROOT / folder).glob("*.py")
    if not p.name.startswith("_")  # helper modules the scripts import
)
THIN_ENTRY_POINT = re.compile(r"is ``ssmsteer ([\w -]+?) ARGS``")


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every subcommand, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


SUBCOMMANDS = {" ".join(path): sub for path, sub in _subcommands(build_parser())}


def _package_files() -> dict[str, str]:
    return {
        str(p.relative_to(PACKAGE)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(PACKAGE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def package_unchanged():
    before = _package_files()
    yield
    assert _package_files() == before, "the package folder changed"


def _words(text: str) -> str:
    """Without whitespace: argparse re-wraps descriptions, also after a hyphen."""
    return "".join(text.split())


def test_every_subcommand_is_listed():
    assert {"eval", "spec", "find", "report", "regress", "sweep", "interpret knockout", "study"} <= set(
        SUBCOMMANDS
    )
    assert {f"study {name}" for name in STUDIES} <= set(SUBCOMMANDS)


def test_a_named_subcommand_imports_its_own_module_only():
    """`ssmsteer find ...` builds the find parser alone: the other subcommands' modules (the report's pull
    in scipy's statistics, a second or two) are not imported; without a known subcommand, all are listed."""
    assert {path for path, _ in _subcommands(build_parser("find"))} == {("find",)}
    assert {("eval",), ("find",), ("report",), ("study",)} <= {
        path for path, _ in _subcommands(build_parser())
    }
    code = (
        "import sys\n"
        "from lm_eval_ssmsteer.cli import main\n"
        "try:\n    main(['find', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lm_eval_ssmsteer.report', 'scipy.stats'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: ssmsteer find" in done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help_exits_0_with_its_docstring(script, package_unchanged, monkeypatch, capsys):
    path = ROOT / script
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    monkeypatch.syspath_prepend(str(path.parent))  # as `python scripts/x.py` puts the script's folder first
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(path), run_name="__main__")
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    thin = THIN_ENTRY_POINT.search(docstring)
    if thin is None:
        assert _words(docstring.splitlines()[0]) in _words(out)
        return
    with pytest.raises(SystemExit):
        main([*thin[1].split(), "--help"])
    assert out == capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_subcommand_help_exits_0_with_a_description(command, package_unchanged, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # `eval` hands its arguments to lm_eval via sys.argv
    with pytest.raises(SystemExit) as exited:
        main([*command.split(), "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ")
    description = SUBCOMMANDS[command].description
    assert description, f"ssmsteer {command} has no description"
    if command != "eval":  # eval's --help is lm_eval's own
        assert _words(description.splitlines()[0]) in _words(out)
