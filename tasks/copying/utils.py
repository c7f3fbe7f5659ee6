"""Data and scoring of the ssmsteer copying tasks: generated offline by lm_eval_ssmsteer.taskdata."""

from functools import partial

from lm_eval_ssmsteer.taskdata.harness import (  # noqa: F401  (named by the YAMLs)
    dataset,
    exact_match,
)
from lm_eval_ssmsteer.taskdata.suite_task import SuiteTask  # noqa: F401

ssm_copy = partial(dataset, "ssm_copy")
ssm_selective_copy = partial(dataset, "ssm_selective_copy")
ssm_mamba_selective_copy = partial(dataset, "ssm_mamba_selective_copy")
ssm_phonebook = partial(dataset, "ssm_phonebook")
