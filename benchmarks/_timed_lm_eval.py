"""``lm_eval``'s own command line, with the seconds each process spends answering requests recorded.

    [accelerate launch --num_processes N] benchmarks/_timed_lm_eval.py LM_EVAL_ARGUMENTS...

benchmarks/data_parallel.py runs lm-eval through this file so that it can tell the evaluation's throughput
(documents over the seconds inside ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``)
from the start-up every process pays once (imports, model load, task building). With ``SSMSTEER_TIMING``
set to a folder, each process writes ``rank<R>.json`` there when it exits: the seconds per request type.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path

from lm_eval.__main__ import cli_evaluate

from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM

REQUEST_METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")
spent: dict[str, float] = {}


def _timed(name: str) -> None:
    inner = getattr(MambaSteeredLM, name)

    def answer(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    setattr(MambaSteeredLM, name, answer)


def _write() -> None:
    folder = os.environ.get("SSMSTEER_TIMING")
    if folder:
        rank = os.environ.get("RANK", "0")
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(spent) + "\n")


if __name__ == "__main__":
    for method in REQUEST_METHODS:
        _timed(method)
    atexit.register(_write)
    cli_evaluate()
