"""The ``mamba-steered`` model_args that can be checked before any model loads: ``pretrained``,
``dtype``, the steering arguments, and the steering spec they name.

Used by the backend's constructor (every entry point) and, on lm_eval's command line, before lm-eval
indexes its tasks (``cli_errors``), so a mistake costs a second and one line naming the field, the
value and what is allowed. Imports neither torch nor lm_eval.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping
from typing import Any

from lm_eval_ssmsteer.loading import check_model_name
from lm_eval_ssmsteer.spec import SpecError, SteeringSpec, load_spec

SHORTHAND = ("steer_layer", "steer_site", "steer_channels", "steer_scale", "steer_positions")
STEERING_ARGS = ("steer", *SHORTHAND)
# what HFLM hands to getattr(torch, dtype), restricted to the float types a Mamba model runs in
DTYPES = {
    "auto": "auto",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
}


class ModelArgsError(ValueError):
    pass


def check_model_args(model_args: Mapping[str, Any]) -> SteeringSpec | None:
    """Check what needs no model (a value of None counts as not given); returns the steering spec."""
    pretrained = model_args.get("pretrained")
    if isinstance(pretrained, str):
        check_model_name(pretrained)
    check_dtype(model_args.get("dtype"))
    check_steering_keys(model_args)
    return spec_from_model_args(model_args.get("steer"), **{name: model_args.get(name) for name in SHORTHAND})


def check_dtype(dtype: Any) -> None:
    if dtype is None or not isinstance(dtype, str) or dtype in DTYPES:
        return  # a torch.dtype from the Python API is HFLM's to take
    allowed = ", ".join(name if name == to else f"{name} (= {to})" for name, to in DTYPES.items())
    raise ModelArgsError(f"dtype={dtype!r}: not a dtype for this model; allowed: {allowed}")


def check_steering_keys(model_args: Mapping[str, Any]) -> None:
    """A key that starts like a steering argument, or is spelt almost like one, but is none of them is a
    misspelling: HFLM would pass it to the model's constructor, and the shorthand would miss its value."""
    for key, value in model_args.items():
        if key in STEERING_ARGS:
            continue
        close = difflib.get_close_matches(key, STEERING_ARGS, n=1, cutoff=0.8)
        if not close and not key.startswith("steer"):
            continue
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelArgsError(
            f"{key}={value!r}: not a model argument of mamba-steered; {hint}"
            f"the steering arguments are {', '.join(STEERING_ARGS)}"
        )


def spec_from_model_args(steer_arg: Any = None, **shorthand: Any) -> SteeringSpec | None:
    """The spec named by ``steer=`` or spelled inline with the ``steer_*`` shorthand (not both)."""
    given = {k: v for k, v in shorthand.items() if v is not None}
    if steer_arg is not None and given:
        raise SpecError(
            f"give either steer= or the steer_* shorthand, not both (got steer and {sorted(given)})"
        )
    if steer_arg is not None:
        if isinstance(steer_arg, (dict, SteeringSpec)):
            return load_spec(steer_arg)
        return load_spec(str(steer_arg))
    if not given:
        return None
    missing = [k for k in ("steer_layer", "steer_site", "steer_scale") if k not in given]
    if missing:
        raise SpecError(f"the steer_* shorthand needs {missing} as well (got {sorted(given)})")
    return SteeringSpec.single(
        layer=_number_or_list(given["steer_layer"], "steer_layer"),
        site=given["steer_site"],
        channels=_number_or_list(given.get("steer_channels", "all"), "steer_channels"),
        scale=_number_or_list(given["steer_scale"], "steer_scale"),
        positions=given.get("steer_positions", "all"),
    )


def _number_or_list(value: Any, name: str) -> Any:
    """model_args strings like "[4,38]" or "4;38" (lm-eval's Python API splits on bare commas)."""
    if not isinstance(value, str) or value == "all":
        return value
    text = value.strip()
    if ";" in text:
        text = "[" + text.replace(";", ",") + "]"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise SpecError(f"{name}={value!r} is not a number, a list of numbers, or 'all'") from None
