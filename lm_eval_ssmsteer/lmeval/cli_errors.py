"""lm_eval's command line with the plugin loaded: a mistake in what the user asked for is one line on
stderr and exit status 2 (like argparse), not a traceback.

``install`` wraps ``HarnessCLI.execute``, the step every entry point runs (``lm_eval``, ``lm-eval``,
``python -m lm_eval``, ``accelerate launch -m lm_eval``, ``ssmsteer eval``). Around it:

- a ``--model mamba-steered`` run has its model_args checked first (``model_args.check_model_args``),
  before lm-eval spends seconds indexing its tasks;
- an exception of a class this package defines (``SpecError``, ``TaskDataError``, ``UnsupportedModelError``,
  ``ModelArgsError``, ``ModelNotFoundError``, ...) says what the user got wrong, in their words, whatever
  the backend: it prints ``lm_eval: error: <message>``;
- in a ``mamba-steered`` run, lm-eval's "Tasks not found" becomes that line too, with "did you mean" for a
  name close to one of this package's tasks.

Every other exception keeps lm-eval's traceback, and runs of other backends on lm-eval's tasks are
untouched. The Python API (``simple_evaluate``) does not go through here: it raises as before.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

PROG = "lm_eval"
EXIT_STATUS = 2
_PACKAGE = __name__.split(".")[0]
_TASKS_NOT_FOUND = "Tasks not found: "  # lm-eval's ValueError (lm_eval.config.evaluate_config)


def install(harness_cli: type) -> None:
    """Wraps ``harness_cli.execute`` once."""
    execute = harness_cli.execute
    if getattr(execute, "_ssmsteer", False):
        return

    @functools.wraps(execute)
    def checked_execute(self, args: Any) -> Any:
        return run(functools.partial(execute, self), args)

    checked_execute._ssmsteer = True
    harness_cli.execute = checked_execute


def run(execute: Callable[[Any], Any], args: Any) -> Any:
    from lm_eval_ssmsteer.lmeval.registration import MODEL_NAME

    ours = getattr(args, "model", None) == MODEL_NAME
    try:
        if ours and isinstance(getattr(args, "model_args", None), dict):
            from lm_eval_ssmsteer.lmeval.model_args import check_model_args

            check_model_args(args.model_args)
        return execute(args)
    except Exception as exc:
        message = one_line(exc, ours)
        if message is None:
            raise
        fail(message)


def one_line(exc: Exception, mamba_steered_run: bool) -> str | None:
    """The line that replaces the traceback of ``exc``, or None to keep the traceback."""
    if type(exc).__module__.split(".")[0] == _PACKAGE:
        return str(exc)
    if mamba_steered_run and isinstance(exc, ValueError) and str(exc).startswith(_TASKS_NOT_FOUND):
        from lm_eval_ssmsteer.lmeval.registration import task_names

        missing = str(exc)[len(_TASKS_NOT_FOUND) :].split(", ")
        return unknown_tasks(missing, task_names())
    return None


def unknown_tasks(missing: Iterable[str], ours: Iterable[str]) -> str:
    ours = sorted(ours)
    named = []
    for name in missing:
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.8)
        named.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return f"--tasks: no such task: {', '.join(named)}; `lm_eval ls tasks` lists the tasks"


def fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_STATUS)
