"""Sweeps: many steering specs evaluated on one model load through lm-eval's evaluator (``ssmsteer sweep``).

``grid`` makes the cells (one spec each), ``folder`` is a sweep's state on disk, ``processes`` shares cells
among the processes of an ``accelerate launch``, ``run`` evaluates and reports, ``cli`` is the subcommand.
"""
