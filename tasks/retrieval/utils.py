"""Data and scoring of the ssmsteer retrieval tasks: generated offline by lm_eval_ssmsteer.taskdata."""

from functools import partial

from lm_eval_ssmsteer.taskdata.harness import (  # noqa: F401  (named by the YAMLs)
    by_length_choice,
    by_length_generated,
    dataset,
    exact_match,
)

ssm_mqar = partial(dataset, "ssm_mqar")
ssm_kv_retrieval = partial(dataset, "ssm_kv_retrieval")
ssm_induction = partial(dataset, "ssm_induction")
