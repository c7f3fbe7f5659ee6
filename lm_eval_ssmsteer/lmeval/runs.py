"""Scoring a model on the suite's TEST documents through lm-eval, as the studies do.

``evaluate`` is the Python twin of ``lm_eval --model mamba-steered --model_args pretrained=...
--tasks ... --metadata '{...}'`` with the shipped task YAMLs; the other functions read its output.
"""

from __future__ import annotations

from pathlib import Path


def fast_scan_allowed(pretrained: str, device: str) -> bool:
    """May ``pretrained`` run the fast CPU scan on ``device`` (``mamba.fastscan``'s one rule)?"""
    from transformers import AutoConfig

    import lm_eval_ssmsteer.mamba.stable  # noqa: F401  (registers model_type "stable_mamba")
    from lm_eval_ssmsteer.loading import resolve_model_path
    from lm_eval_ssmsteer.mamba.fastscan import fast_scan_refusal_for

    model_type = AutoConfig.from_pretrained(resolve_model_path(pretrained)).model_type
    return fast_scan_refusal_for(model_type, device) is None


def evaluate(
    pretrained: str,
    tasks: list[str],
    metadata: dict,
    spec: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    log_samples: bool = False,
    backend: str = "mamba-steered",
) -> dict:
    """lm-eval's output for ``pretrained`` in float32 through ``backend`` (``mamba-steered``, or the stock
    ``hf``), steered by the spec file ``spec`` if one is given;
    a Mamba-family model on the CPU runs the fast scans (the same values as transformers' scans). The task
    knobs (``num_samples``, ``max_seq_lengths``, counts) travel in ``metadata`` together with the model
    arguments, as lm-eval's CLI passes them, so the tasks count lengths in the model's tokenizer."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lm_eval_ssmsteer.lmeval.registration import register_model, tasks_dir

    register_model()  # where the start-up hook is not installed (a checkout on PYTHONPATH)
    model_args: dict = {"pretrained": pretrained, "dtype": "float32", "backend": "causal"}
    if backend == "mamba-steered" and fast_scan_allowed(pretrained, device):
        model_args["fast_scan"] = True
    if backend == "hf":  # the stock backend knows no short names
        from lm_eval_ssmsteer.loading import resolve_model_path

        model_args["pretrained"] = resolve_model_path(pretrained)
    if spec is not None:
        model_args["steer"] = str(spec)
    manager = TaskManager(
        include_path=str(tasks_dir()), include_defaults=False, metadata={**model_args, **metadata}
    )
    return simple_evaluate(
        model=backend,
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        device=device,
        batch_size=batch_size,
        log_samples=log_samples,
    )


def columns(task: str, lengths: list[int]) -> list[tuple[str, str]]:
    """(column name, lm-eval metric) of a task: one per length for the long-context tasks (RULER's
    string_match_all at that length), else exact_match."""
    from lm_eval_ssmsteer.taskdata import TASKS

    short = task.removeprefix("ssm_")
    if TASKS[task].long_context:
        return [(f"{short}@{length}", str(length)) for length in lengths]
    return [(short, "exact_match")]


def column_scores(out: dict, tasks: list[str], lengths: list[int]) -> dict[str, tuple[float, float]]:
    """(score, standard error) per column of ``evaluate``'s output."""
    scores = {}
    for task in tasks:
        result = out["results"][task]
        for column, metric in columns(task, lengths):
            scores[column] = (result[f"{metric},none"], result[f"{metric}_stderr,none"])
    return scores


def document_scores(out: dict, tasks: list[str], lengths: list[int]) -> dict[str, float]:
    """{"task|length|doc_hash": score} for every document of ``evaluate(..., log_samples=True)``'s output
    (long-context tasks: the score at the document's length)."""
    scores = {}
    for task in tasks:
        for sample in out["samples"][task]:
            length = next(str(n) for n in lengths if str(n) in sample)
            scores[f"{task}|{length}|{sample['doc_hash']}"] = float(sample[length])
    return scores
