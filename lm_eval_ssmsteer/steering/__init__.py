"""Steering: a spec resolved once against a model (``plan``), applied around each forward (``apply``)."""

from lm_eval_ssmsteer.steering.apply import plan_for, steer, steer_factors
from lm_eval_ssmsteer.steering.plan import SteeringPlan, resolve

__all__ = ["SteeringPlan", "plan_for", "resolve", "steer", "steer_factors"]
