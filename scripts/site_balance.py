"""Whether a survey plant's damped channels stand out from their layer's natural scatter of size (issue 22).

    python scripts/site_balance.py --model ref-mamba1 [--plant U69] [--device cpu]

On a Mamba-1 or Mamba-2 model, planted with the survey plant ``--plant`` (none: the model as shipped), it runs
the channel-size pass of method ``outlier`` over the survey's calibration documents (its needle tasks, 512 and
2048 tokens, 4 documents a task and length) at every layer's gated output (site ``ssm_out``, the product
Mamba-1's gate and ssm_out share), and sets each channel's log RMS there beside the log norm of what reads it:
its ``out_proj`` column (Mamba-2: times the gated norm's weight). Per layer it prints the correlation of the
two, then each way of fitting one on the other (``finder.magnitude.robust_line``: least squares, refitted 5
times on the channels within 3 robust spreads): the slope, the robust spread of the residuals, and how many
channels lie more than 3 spreads below the line; at the planted layer, how many of those are planted. A
Mamba-1 ssm_out plant scales ``out_proj`` columns (the column falls, the RMS stays); a gate plant scales ``z``
(the RMS falls, the column stays): ``column on RMS`` looks for the first, ``RMS on column`` for the second.
For an ssm_out or gate plant it then prints, at the planted layer, the low outliers of each read ``find`` can
take (y plain, as the default; y balanced, as ``find --balance``; on Mamba-2 the gated product y·SiLU(z),
plain and balanced, the latter ``--balance``'s gate read).
"""

from __future__ import annotations

import argparse

import torch

from lm_eval_ssmsteer.finder import magnitude
from lm_eval_ssmsteer.loading import load_model, resolve_model_path
from lm_eval_ssmsteer.mamba.arch import MAMBA1, describe_model
from lm_eval_ssmsteer.studies import survey
from lm_eval_ssmsteer.studies.damping import plant as plant_damage


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ref-mamba1")
    p.add_argument("--plant", default=None, help="a survey plant id, e.g. U69 (default: none)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    path = resolve_model_path(a.model)
    plants = {pl.id: pl for pl in survey._plant_list(path)}
    if a.plant is not None and a.plant not in plants:
        p.error(f"--plant {a.plant!r}: not a plant of {a.model}; allowed: {', '.join(sorted(plants))}")
    docs = argparse.Namespace(
        tasks=list(survey.SURVEY_TASKS), docs_per_task=survey.DOCS_PER_TASK, lengths=[512, 2048],
        test_docs=2, device=a.device,
    )  # fmt: skip
    model, tokenizer = load_model(path, device=a.device)
    data, _ = survey.find_documents(tokenizer, docs)
    pl = plants.get(a.plant)
    planted = set(plant_damage(model, pl.layer, pl.site, pl.count, pl.scale, pl.seed)) if pl else set()
    arch = describe_model(model)
    pairs = [(layer, "ssm_out") for layer in arch.steerable_layers]
    rms = magnitude.channel_rms(model, list(data["calibration"].batches()), pairs, arch.site_width)
    reading = magnitude.reading_norms(model, [layer for layer, _ in pairs])
    spreads = magnitude.LINE_SPREADS
    print(
        f"{a.model}, plant {a.plant or 'none'}"
        + (f": L{pl.layer} {pl.site} {pl.count} x{pl.scale:g}" if pl else "")
    )
    print("| layer | correlation | fit | slope | spread | flagged | planted flagged |")
    print("|---|---|---|---|---|---|---|")
    for layer, site in pairs:
        column = reading[layer]
        log_rms = magnitude.log_size(rms[(layer, site)])
        log_column = column.clamp(min=1e-30).log()
        correlation = float(torch.corrcoef(torch.stack([log_rms, log_column]))[0, 1])
        here = pl is not None and layer == pl.layer and pl.site in ("ssm_out", "gate")
        for name, x, y in (("column on RMS", log_rms, log_column), ("RMS on column", log_column, log_rms)):
            slope, residual, spread = magnitude.robust_line(x, y)
            low = {int(c) for c in torch.nonzero(residual < -spreads * spread).flatten()}
            hit = f"{len(low & planted)} of {len(planted)}" if here else "–"
            print(
                f"| {layer} | {correlation:.2f} | {name} | {slope:.2f} | {spread:.3f} | {len(low)} | {hit} |"
            )
    if pl is not None and pl.site in ("ssm_out", "gate"):
        print_reads(model, list(data["calibration"].batches()), pl.layer, rms[(pl.layer, "ssm_out")], planted)
    return 0


def print_reads(model, batches: list, layer: int, y_rms: torch.Tensor, planted: set[int]) -> None:
    """At the planted layer, the low outliers (``magnitude.low_outliers``) of each read ``find`` can take:
    y as the default reads it and as ``--balance`` sets it against its reading norm, and (Mamba-2, where
    ``--balance`` reads the gate pair so) the gated product y·SiLU(z), plain and balanced."""
    arch = describe_model(model)
    reading = magnitude.reading_norms(model, [layer])[layer]
    reads = {"y": y_rms}
    if arch.family != MAMBA1:
        gated = magnitude.channel_rms(model, batches, [(layer, "gate")], arch.site_width, gated=(layer,))
        reads["y*SiLU(z)"] = gated[(layer, "gate")]
    print(f"\nlayer {layer}: low outliers (flagged, of them planted)")
    print("| read | plain | balanced |")
    print("|---|---|---|")
    for name, size in reads.items():
        cells = []
        for sizes in (size, magnitude.balanced_size(size, reading)):
            low = set(magnitude.low_outliers(sizes).channels)
            cells.append(f"{len(low)}, {len(low & planted)} of {len(planted)}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    raise SystemExit(main())
