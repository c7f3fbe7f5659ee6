"""What a model writes in each answer slot of ssm_niah_multiquery, from lm-eval's sample files.

    python scripts/multiquery_slots.py FOLDER [FOLDER ...]

For every folder (an lm-eval ``--output_path`` run with ``--log_samples``), the multiquery documents that
ask two keys or more: per slot (the first queried key's value, the second's, ...), how often the model
wrote the right value, the value of another queried key, the value of a needle that was not asked (a
distractor), or something that is no needle's value. The answer is read as lm-eval's filter keeps it:
its first line, split at commas (the task's answer form: ``v1, v2.``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from lm_eval_ssmsteer.report.documents import samples_in

OUTCOMES = ("right", "other queried key", "distractor needle", "no needle")
_VALUE = re.compile(r"\d+")


def slot_outcomes(sample: dict) -> list[str]:
    """The outcome of each slot of one sample (``OUTCOMES``); [] when it asks a single key."""
    doc = sample["doc"]
    wanted = [v.strip(" .") for v in str(sample["target"]).split(",")]
    if len(wanted) < 2:
        return []
    written = [v.strip(" .") for v in sample["filtered_resps"][0].split("\n")[0].split(",")]
    needles = {m for n in doc["needles"] for m in _VALUE.findall(n.rsplit(" is ", 1)[-1])}
    out = []
    for i, value in enumerate(wanted):
        got = written[i] if i < len(written) else ""
        if got == value:
            out.append("right")
        elif got in wanted:
            out.append("other queried key")
        elif got in needles:
            out.append("distractor needle")
        else:
            out.append("no needle")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    a = p.parse_args(argv)
    print("| run | documents | slot | " + " | ".join(OUTCOMES) + " |")
    print("|---|---|---|" + "---|" * len(OUTCOMES))
    for folder in a.folders:
        samples = [s for (task, _), s in samples_in(folder).items() if task == "ssm_niah_multiquery"]
        if not samples:
            print(f"error: {folder}: no ssm_niah_multiquery sample file under it", file=sys.stderr)
            return 2
        per_slot: dict[int, Counter] = {}
        asked = 0
        for sample in samples:
            outcomes = slot_outcomes(sample)
            asked += bool(outcomes)
            for i, outcome in enumerate(outcomes):
                per_slot.setdefault(i, Counter())[outcome] += 1
        for i in sorted(per_slot):
            counts = " | ".join(str(per_slot[i][o]) for o in OUTCOMES)
            print(f"| {folder.name} | {asked} of {len(samples)} | {i + 1} | {counts} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
