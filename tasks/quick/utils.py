"""Data and scoring of the ssmsteer_quick smoke/regression subset (small versions of the suite's tasks)."""

from functools import partial

from lm_eval_ssmsteer.taskdata.harness import (  # noqa: F401  (named by the YAMLs)
    by_length_choice,
    by_length_generated,
    choice_per_query,
    dataset,
    exact_match,
)
from lm_eval_ssmsteer.taskdata.suite_task import SuiteTask  # noqa: F401

ssm_copy = partial(dataset, "ssm_copy")
ssm_phonebook = partial(dataset, "ssm_phonebook")
ssm_mqar = partial(dataset, "ssm_mqar")
ssm_kv_retrieval = partial(dataset, "ssm_kv_retrieval")
ssm_induction = partial(dataset, "ssm_induction")
ssm_passkey = partial(dataset, "ssm_passkey")
ssm_niah_single = partial(dataset, "ssm_niah_single")
