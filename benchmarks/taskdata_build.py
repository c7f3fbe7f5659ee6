"""Building long-context documents: milliseconds a document by number of threads.

    python benchmarks/taskdata_build.py --tokenizer ../shared/data/gpt-neox-20b-tokenizer \\
        [--task ssm_passkey] [--length 8192] [--docs 40] [--threads 1,2,4,8]

Lengths are measured with the tokenizer as an lm-eval run measures them (``taskdata.harness``); every
thread count must give the same documents (checked; exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import time

from lm_eval_ssmsteer.taskdata import generate
from lm_eval_ssmsteer.taskdata.harness import token_counter


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--task", default="ssm_passkey")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--docs", type=int, default=40)
    p.add_argument("--threads", default="1,2")
    a = p.parse_args()
    count = token_counter({"tokenizer": a.tokenizer})
    count("warm-up")
    print(f"{a.task}, {a.docs} documents at {a.length} tokens")
    print("| threads | ms a document | speed-up |")
    print("|---|---|---|")
    first, reference = None, None
    for threads in (int(t) for t in a.threads.split(",")):
        start = time.perf_counter()
        docs = generate(a.task, "test", a.docs, seed=0, count_tokens=count, workers=threads, length=a.length)
        ms = (time.perf_counter() - start) / a.docs * 1000
        text = json.dumps(docs, sort_keys=True)
        reference = reference or text
        first = first or ms
        print(f"| {threads} | {ms:.1f} | {first / ms:.2f}x |")
        if text != reference:
            print(f"PROBLEM: {threads} threads built other documents")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
