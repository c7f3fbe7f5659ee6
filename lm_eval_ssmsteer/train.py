"""`python -m lm_eval_ssmsteer.train`: trains a reference model in resumable stages (training/cli.py)."""

from lm_eval_ssmsteer.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
