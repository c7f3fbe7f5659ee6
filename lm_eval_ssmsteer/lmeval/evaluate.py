"""Evaluating spec after spec on one loaded ``mamba-steered`` backend, through lm-eval's own evaluator
(``simple_evaluate``), each saved the way ``lm_eval --output_path DIR --log_samples`` saves a run: the glue
``ssmsteer sweep`` runs each cell through.

What lm_eval's command line does and this repeats: the model arguments parsed by its own parser, the task
manager made with the model arguments as task metadata (the ssmsteer tasks count lengths with the model's
tokenizer), the same seeds, and the results saved by ``EvaluationTracker``. What differs: the backend is
built once, and each evaluation gets the model arguments it would have had as a separate run
(``steer=<spec file>``) recorded in its results, and its own response cache (lm-eval's ``use_cache``: a
killed evaluation's responses are replayed when it is run again, never another spec's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval_ssmsteer.lmeval.registration import MODEL_NAME
from lm_eval_ssmsteer.spec import SteeringSpec


@dataclass(frozen=True)
class EvalSettings:
    """What every evaluation of a sweep shares, as lm_eval's options of the same names."""

    model_args: dict[str, Any]
    tasks: list[str]
    device: str | None = None
    batch_size: int | str = 1
    max_batch_size: int | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    include_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    cache_requests: bool = False


def parse_model_args(text: str) -> dict[str, Any]:
    """``--model_args`` as lm_eval's command line reads it: a JSON object, or ``key=value,key=value``."""
    from lm_eval._cli.utils import key_val_to_dict, try_parse_json

    found = try_parse_json(text)
    return dict(found) if isinstance(found, dict) else key_val_to_dict(text)


def task_manager(settings: EvalSettings):
    """lm-eval's task manager with the model arguments and ``--metadata`` as task metadata, as lm_eval
    makes it; ValueError naming the tasks it does not know.

    lm-eval's own tasks are indexed only when a task is not among the project's and ``include_path``'s:
    that index reads some 14,000 YAML files (10-15 s on one core). A task named exactly, found there, is
    the same task either way: lm-eval lets an included task override a built-in one of the same name."""
    from lm_eval.tasks import TaskManager

    from lm_eval_ssmsteer.lmeval import registration
    from lm_eval_ssmsteer.lmeval.cli_errors import unknown_tasks

    registration.register_if_loaded()
    metadata = settings.model_args | settings.metadata
    ours = TaskManager(include_path=settings.include_path, include_defaults=False, metadata=metadata)
    if set(settings.tasks) <= set(ours.all_tasks):  # exact names only: a pattern may match built-ins too
        return ours
    manager = TaskManager(include_path=settings.include_path, metadata=metadata)
    missing = [task for task in settings.tasks if not manager.match_tasks([task])]
    if missing:
        raise ValueError(unknown_tasks(missing, registration.task_names()))
    return manager


def load_backend(settings: EvalSettings):
    """The ``mamba-steered`` backend, unsteered, built as lm-eval builds it from model arguments."""
    from lm_eval_ssmsteer.lmeval.backend import MambaSteeredLM

    return MambaSteeredLM.create_from_arg_obj(
        settings.model_args,
        {
            "batch_size": settings.batch_size,
            "max_batch_size": settings.max_batch_size,
            "device": settings.device,
        },
    )


def evaluate_into(
    lm,
    spec: SteeringSpec | None,
    recorded_args: dict[str, Any],
    settings: EvalSettings,
    manager,
    out_dir: Path,
    response_cache: Path,
) -> Path:
    """Evaluate ``lm`` steered by ``spec`` on the sweep's tasks, and save results and samples into
    ``out_dir`` as ``lm_eval --output_path out_dir --log_samples`` would, with ``recorded_args`` as the
    model arguments; returns the results file. ``response_cache`` is the stem of lm-eval's response cache."""
    import lm_eval
    from lm_eval.api.model import CacheHook
    from lm_eval.loggers import EvaluationTracker

    lm.set_steering(spec)
    tracker = EvaluationTracker(output_path=str(out_dir))
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=settings.tasks,
            num_fewshot=settings.num_fewshot,
            batch_size=settings.batch_size,
            max_batch_size=settings.max_batch_size,
            device=settings.device,
            use_cache=str(response_cache),
            cache_requests=settings.cache_requests,
            limit=settings.limit,
            log_samples=True,
            evaluation_tracker=tracker,
            task_manager=manager,
        )
    finally:
        cache = lm.cache_hook.dbdict
        lm.set_cache_hook(CacheHook(None))
        if cache is not None:
            cache.close()
    # simple_evaluate names a model object by its class and folder; record it as the command line would
    results["config"].update({"model": MODEL_NAME, "model_args": recorded_args})
    config = tracker.general_config_tracker
    config.log_experiment_args(
        model_source=MODEL_NAME,
        model_args=recorded_args,
        system_instruction=config.system_instruction,
        chat_template=config.chat_template,
        fewshot_as_multiturn=config.fewshot_as_multiturn,
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    saved = out_dir / str(config.model_name_sanitized) / f"results_{tracker.date_id}.json"
    unsaved = [saved] if not saved.is_file() else []
    unsaved += [
        p
        for t in results["configs"]
        if not (p := saved.with_name(f"samples_{t}_{tracker.date_id}.jsonl")).is_file()
    ]
    if unsaved:
        raise OSError(f"lm-eval could not write {', '.join(map(str, unsaved))} (its log says why)")
    return saved


def cached_responses(response_cache: Path) -> int:
    """How many responses lm-eval's cache under this stem holds (a killed evaluation's work)."""
    from sqlitedict import SqliteDict

    total = 0
    for db in sorted(response_cache.parent.glob(f"{response_cache.name}_rank*.db")):
        with SqliteDict(str(db), flag="r") as cached:
            total += len(cached)
    return total
