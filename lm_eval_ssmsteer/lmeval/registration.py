"""Makes lm_eval see the ``mamba-steered`` backend and the package's task folder, and makes its command
line report the plugin's errors in one line (``cli_errors``).

Called by the start-up hook (``_autoload``) when lm_eval's registry, task manager or command line is
imported, by ``import lm_eval_ssmsteer`` when lm_eval is already loaded, and by the ``ssmsteer`` console
script.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

MODEL_NAME = "mamba-steered"
BACKEND_TARGET = "lm_eval_ssmsteer.lmeval.backend:MambaSteeredLM"


def tasks_dir() -> Path:
    """The shipped task YAMLs: inside the wheel, or the repository's top-level ``tasks/`` when editable."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "tasks", package.parent / "tasks"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lm_eval_ssmsteer: task folder not found beside {package}")


@functools.cache
def task_names() -> frozenset[str]:
    """The task and group names the shipped YAMLs define (read from the files: no lm-eval index)."""
    name = re.compile(r"^(?:task|group):[ \t]*([\w.-]+)[ \t]*$", re.MULTILINE)
    return frozenset(m for path in tasks_dir().rglob("*.yaml") for m in name.findall(path.read_text()))


def register_model() -> None:
    # lm_eval.models must be imported first: get_model() only loads the built-in table while the
    # registry is empty, so registering before it would hide every built-in backend.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=BACKEND_TARGET)


def register_tasks() -> None:
    # lm_eval.tasks exports TaskManager on every supported release (defined there up to 0.4.10, in
    # lm_eval.tasks.manager later): patching the class reaches both names.
    from lm_eval.tasks import TaskManager

    init = TaskManager.__init__
    if getattr(init, "_ssmsteer", False):
        return

    @functools.wraps(init)
    def __init__(self, *args, include_path=None, **kwargs):
        ours = str(tasks_dir())
        paths = (
            []
            if include_path is None
            else (list(include_path) if isinstance(include_path, (list, tuple)) else [include_path])
        )
        if ours not in {str(p) for p in paths}:
            paths.append(ours)
        init(self, *args, include_path=paths, **kwargs)

    __init__._ssmsteer = True
    TaskManager.__init__ = __init__
    # our tasks say once per run which defaults they use (taskdata.harness) instead
    from lm_eval_ssmsteer.log_filters import drop_metadata_hint

    drop_metadata_hint(lambda task: task in task_names())


def register_cli() -> None:
    from lm_eval._cli.harness import HarnessCLI

    from lm_eval_ssmsteer.lmeval import cli_errors

    cli_errors.install(HarnessCLI)


def register_if_loaded() -> None:
    if "lm_eval.api.registry" in sys.modules:
        register_model()
    if "lm_eval.tasks" in sys.modules:
        register_tasks()
    if "lm_eval._cli.harness" in sys.modules:
        register_cli()
