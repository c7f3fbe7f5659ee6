"""Training the reference models on the suite's TRAIN split, in resumable stages
(`python -m lm_eval_ssmsteer.train`; docs/training.md): mix.py (the data), models.py (the shapes),
monitor.py (per-task answer accuracy while training), loop.py (the stages and checkpoints), cli.py."""
