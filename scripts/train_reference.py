"""Train a reference model in resumable stages (lm_eval_ssmsteer/training; docs/training.md).

    python scripts/train_reference.py --arch mamba2 --run runs/m2 --time-budget 480 --device cuda
    python scripts/train_reference.py --run runs/m2 --resume --time-budget 480 --decay-in-budget

The shippable model folder is RUN/model after every stage.
"""

from lm_eval_ssmsteer.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main(description=__doc__))
