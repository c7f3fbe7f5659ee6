"""Train a shipped reference model.

    python scripts/train_reference.py --arch mamba --out lm_eval_ssmsteer/models/ref-mamba1


See lm_eval_ssmsteer/train.py for the data mix, model shapes and schedule.
"""

from lm_eval_ssmsteer.train import main

if __name__ == "__main__":
    raise SystemExit(main(description=__doc__))
