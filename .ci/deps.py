"""The dependencies pyproject.toml declares, for .ci/run's two legs.

  python3 .ci/deps.py lower-bounds   pip constraints pinning each one at its declared lower bound
  python3 .ci/deps.py versions       the installed version of each one, on one line

The lowest leg installs with the first, so the lower bounds CI tests are exactly the ones declared.
torch is left out of the constraints: .ci/run pins the one CPU wheel its machine has.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

import tomllib

# "name[extras]>=floor[,<ceiling]"
REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(\[[^\]]*\])?>=(?P<floor>[^,;]+)(,[^;]*)?")


def lower_bounds() -> dict[str, str]:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        match = REQUIREMENT.fullmatch(requirement.replace(" ", ""))
        if match is None:
            sys.exit(f".ci/deps.py: {requirement!r} in pyproject.toml has no lower bound (name>=version)")
        bounds[match["name"]] = match["floor"]
    return bounds


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) == 2 else ""
    if mode == "lower-bounds":
        print("\n".join(f"{name}=={floor}" for name, floor in lower_bounds().items() if name != "torch"))
    elif mode == "versions":
        installed = [f"{name} {version(name)}" for name in [*lower_bounds(), "huggingface-hub"]]
        print(", ".join([f"python {sys.version.split()[0]}", *installed]))
    else:
        sys.exit("usage: python3 .ci/deps.py lower-bounds|versions")


if __name__ == "__main__":
    main()
