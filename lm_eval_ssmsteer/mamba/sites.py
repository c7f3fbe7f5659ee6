"""Every steering site, as one table row per (site, mixer family): its width, how it is reached, its twin.

| site      | Mamba-1 / FalconMamba / Stable-Mamba        | Mamba-2                                   |
|-----------|---------------------------------------------|-------------------------------------------|
| mixer_out | d_model, mixer output (before the residual) | same                                      |
| residual  | d_model, block output                       | same                                      |
| delta     | d_inner, Δ after softplus                   | n_heads, Δ after softplus and clamp       |
| B, C      | d_state (FalconMamba: after its RMS norm)   | n_groups × d_state                        |
| ssm_out   | d_inner, scan output y with the D skip      | d_inner, y before the gated RMSNorm       |
| gate      | d_inner, SiLU(z)                            | d_inner, SiLU(z) inside the gated RMSNorm |

The hybrids' Mamba layers take their family's rows: Bamba, Granite 4.0-H, Nemotron-H and Zamba2 are
Mamba-2 (the same gated RMSNorm), Jamba is Mamba-1 (B and C after its RMS norms, Δ from its normed
low-rank input). ``residual`` is the output of the whole decoder layer (Zamba2's hybrid layers: shared
transformer block and Mamba together; Falcon-H1: Mamba, attention and MLP). Falcon-H1 has rows of its
own for ``ssm_out`` and ``gate``: its gated norm is optional (``mamba_rms_norm``; without it the mixer
multiplies y by SiLU(z) inline, or hands z to the decode step), so both are reached as the scan
functions' output y (see ``docs/hybrids.md`` for where each site sits relative to its multipliers).

A site is reached in one of a few ways (``REACHES``), each implemented once in ``steering.apply``: a
module's output, a scan input (Δ, B or C), the scan's gated output y·SiLU(z), the Mamba-2 scan's output
y, or the gated norm's input. A row may be specific to one architecture (``SiteRow.architecture``); it
then takes precedence over its family's row.
Twins have the same effect for a pure scale of the same channels at every position (ssm_out and gate
multiply one product; B and C scale the same term of y = Σ_n C[n]·h[n]). A new site is one name and a
row per family (``register_site``); tests/test_mamba_tables.py shows it. Pure data: no torch import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lm_eval_ssmsteer.mamba.arch import FAMILIES, ArchInfo

# how a site is reached (steering.apply implements each)
MIXER_OUTPUT = "mixer_output"  # forward hook on the mixer
BLOCK_OUTPUT = "block_output"  # forward hook on the block
SCAN_DELTA = "scan_delta"  # the Δ input of the scan functions (scaled after softplus and clamp)
SCAN_B = "scan_B"
SCAN_C = "scan_C"
SCAN_GATED_OUTPUT = "scan_gated_output"  # the scan functions' output y·SiLU(z) (Mamba-1)
GATED_NORM_INPUT = "gated_norm_input"  # y entering Mamba-2's gated RMSNorm, which multiplies SiLU(z)
# the Mamba-2 scan functions' output: y with the D skip (y·SiLU(z) where the caller hands z to the scan)
SCAN_OUTPUT = "scan_output"
REACHES = (
    MIXER_OUTPUT,
    BLOCK_OUTPUT,
    SCAN_DELTA,
    SCAN_B,
    SCAN_C,
    SCAN_GATED_OUTPUT,
    GATED_NORM_INPUT,
    SCAN_OUTPUT,
)
# sites read as module outputs: the finder's activation-variance method can record them
OUTPUT_REACHES = (MIXER_OUTPUT, BLOCK_OUTPUT)
# the scan's inputs, in this order: steering one of them changes what the scan computes; steering any other
# reach of a layer leaves that layer's scan computing what it computes unsteered
SCAN_INPUT_REACHES = (SCAN_DELTA, SCAN_B, SCAN_C)


@dataclass(frozen=True)
class SiteRow:
    site: str
    family: str
    width: Callable[[ArchInfo], int]
    reach: str
    twin: str | None = None
    architecture: str | None = None  # a model_type whose mixers differ from the family's


_ROWS: dict[tuple[str, str, str | None], SiteRow] = {}
_NAMES: list[str] = []


def register_site(row: SiteRow) -> None:
    if row.family not in FAMILIES:
        raise ValueError(f"family={row.family!r} is not a mixer family; allowed: {', '.join(FAMILIES)}")
    if row.reach not in REACHES:
        raise ValueError(f"reach={row.reach!r} is not a way to reach a site; allowed: {', '.join(REACHES)}")
    _ROWS[(row.site, row.family, row.architecture)] = row
    if row.site not in _NAMES:
        _NAMES.append(row.site)


def site_names() -> tuple[str, ...]:
    """Every site name, in table order."""
    return tuple(_NAMES)


def site_row(site: str, family: str, architecture: str | None = None) -> SiteRow:
    row = _ROWS.get((site, family, architecture)) or _ROWS.get((site, family, None))
    if row is None:
        from lm_eval_ssmsteer.spec import SpecError

        allowed = [s for s in _NAMES if (s, family, None) in _ROWS or (s, family, architecture) in _ROWS]
        raise SpecError(f"site={site!r} does not exist on {family} mixers; allowed: {', '.join(allowed)}")
    return row


def twin(site: str, family: str, architecture: str | None = None) -> str | None:
    return site_row(site, family, architecture).twin


def same_site(a: str, b: str, family: str, architecture: str | None = None) -> bool:
    """a and b are the same site or twins (the same effect for a pure scale)."""
    return a == b or twin(a, family, architecture) == b


def _d_model(a: ArchInfo) -> int:
    return a.d_model


def _d_inner(a: ArchInfo) -> int:
    return a.d_inner


def _d_state(a: ArchInfo) -> int:
    return a.d_state


def _heads(a: ArchInfo) -> int:
    return a.n_heads


def _group_states(a: ArchInfo) -> int:
    return a.n_groups * a.d_state


for _row in (
    SiteRow("mixer_out", "mamba1", _d_model, MIXER_OUTPUT),
    SiteRow("mixer_out", "mamba2", _d_model, MIXER_OUTPUT),
    SiteRow("residual", "mamba1", _d_model, BLOCK_OUTPUT),
    SiteRow("residual", "mamba2", _d_model, BLOCK_OUTPUT),
    SiteRow("delta", "mamba1", _d_inner, SCAN_DELTA),
    SiteRow("delta", "mamba2", _heads, SCAN_DELTA),
    SiteRow("B", "mamba1", _d_state, SCAN_B, twin="C"),
    SiteRow("B", "mamba2", _group_states, SCAN_B, twin="C"),
    SiteRow("C", "mamba1", _d_state, SCAN_C, twin="B"),
    SiteRow("C", "mamba2", _group_states, SCAN_C, twin="B"),
    SiteRow("ssm_out", "mamba1", _d_inner, SCAN_GATED_OUTPUT, twin="gate"),
    SiteRow("ssm_out", "mamba2", _d_inner, GATED_NORM_INPUT, twin="gate"),
    SiteRow("gate", "mamba1", _d_inner, SCAN_GATED_OUTPUT, twin="ssm_out"),
    SiteRow("gate", "mamba2", _d_inner, GATED_NORM_INPUT, twin="ssm_out"),
    SiteRow("ssm_out", "mamba2", _d_inner, SCAN_OUTPUT, twin="gate", architecture="falcon_h1"),
    SiteRow("gate", "mamba2", _d_inner, SCAN_OUTPUT, twin="ssm_out", architecture="falcon_h1"),
):
    register_site(_row)

SITES = site_names()  # the built-in sites, in order (pinned by tests/test_mamba_tables.py)
# sites that are a module's output on every family: a forward hook can read them (the finder's variance)
OUTPUT_SITES = tuple(s for s in SITES if all(site_row(s, f).reach in OUTPUT_REACHES for f in FAMILIES))
