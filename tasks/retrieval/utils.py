"""Data and scoring of the ssmsteer retrieval tasks: generated offline by lm_eval_ssmsteer.taskdata."""

from functools import partial

from lm_eval_ssmsteer.taskdata.harness import (  # noqa: F401  (named by the YAMLs)
    choice_per_query,
    dataset,
    exact_match,
    greedy_per_query,
)
from lm_eval_ssmsteer.taskdata.suite_task import SuiteTask  # noqa: F401

ssm_mqar = partial(dataset, "ssm_mqar")
ssm_zoology_mqar = partial(dataset, "ssm_zoology_mqar")
ssm_kv_retrieval = partial(dataset, "ssm_kv_retrieval")
ssm_induction = partial(dataset, "ssm_induction")
