"""Data and scoring of the ssmsteer longctx tasks: generated offline by lm_eval_ssmsteer.taskdata."""

from functools import partial

from lm_eval_ssmsteer.taskdata.harness import (  # noqa: F401  (named by the YAMLs)
    by_length_choice,
    by_length_generated,
    dataset,
)
from lm_eval_ssmsteer.taskdata.suite_task import SuiteTask  # noqa: F401

ssm_passkey = partial(dataset, "ssm_passkey")
ssm_niah_single = partial(dataset, "ssm_niah_single")
ssm_niah_multikey = partial(dataset, "ssm_niah_multikey")
ssm_niah_multivalue = partial(dataset, "ssm_niah_multivalue")
ssm_niah_multiquery = partial(dataset, "ssm_niah_multiquery")
ssm_variable_tracking = partial(dataset, "ssm_variable_tracking")
ssm_ruler_niah_single = partial(dataset, "ssm_ruler_niah_single")
ssm_ruler_niah_multikey = partial(dataset, "ssm_ruler_niah_multikey")
