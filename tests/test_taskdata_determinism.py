"""Generated documents are identical across processes, whatever Python's string-hash seed."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import hashlib, json
from lm_eval_ssmsteer.taskdata import TASKS, generate
for task in sorted(TASKS):
    docs = generate(task, "test", 4, seed=0)
    print(task, hashlib.sha256(json.dumps(docs, sort_keys=True).encode()).hexdigest())
"""


def test_documents_do_not_depend_on_the_hash_seed():
    outputs = []
    for seed in ("1", "2"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        proc = subprocess.run(
            [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) >= 12
