"""Steering across architectures × dtypes × sites × positions, on the path users run: identity and no crash.

For Mamba-1, Mamba-2 and FalconMamba (mamba-130m shapes, random weights), and the six hybrids (Bamba,
Granite 4.0-H, Falcon-H1, Nemotron-H, Zamba2, Jamba: the same widths, attention in every fourth layer
from layer 3; random weights, no download) in fp32, bf16 and fp16, every site and every positions mode,
steering three layers (4, 12 and 20 of the pure models; the first, middle and last Mamba layers of a
hybrid) on all channels:
- scale 1.0 must reproduce the unsteered model on the same path, bit for bit: prefill logits
  (batch × length tokens) and cached greedy decoding (prompt, then new tokens; every step's logits);
- scale 1.5 must run (no exception, finite logits) and change what its positions mode says it changes
  (``generated`` leaves the prefill alone; every mode changes the decoded logits);
- on CUDA with mamba-ssm, every Mamba layer of a steered prefill and decode step must launch the scan
  kernels (bf16, scale 1.5, positions all).
The unsteered model run twice gives the path's own run-to-run difference (0 for deterministic kernels),
which is the bound the prefill identity is held to. Two more unsteered decodes say how much the decode
depends on the process's state rather than on steering: with other tensors held on the device while it
runs (``alloc``: the caching allocator hands out other blocks), and once more after every steered row
(``drift``). The decode identity is held to the larger of run-to-run and ``alloc``: on the GPU a hybrid's
16-bit attention decode step changes in the last place with what else the device holds, steered or not
(``decode_alloc_probe.py``; docs/hybrids.md). Where that is 0 (fp32, pure Mamba) the bound stays 0.
Two decodes are compared over the steps they took from the same input (``decode_diff``): where such a
last-place difference flips a greedy near-tie, the steps after the flip read other tokens and are left
out, and the row says that the tokens differ.
``--deterministic`` runs with torch's deterministic algorithms and a fixed cuBLAS workspace; ``--attn``
picks a hybrid's attention implementation. Prints one Markdown table; exits 1 on any failure.

    python benchmarks/gpu_matrix.py --out gpu_matrix.json            # CUDA, 130m shapes
    python benchmarks/gpu_matrix.py --device cpu --shape tiny        # the same checks on CPU, small
    python benchmarks/gpu_matrix.py --archs bamba jamba               # some architectures only
    python benchmarks/gpu_matrix.py --archs zamba2 --dtypes bf16 --deterministic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import (
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
    MambaConfig,
    MambaForCausalLM,
)

from lm_eval_ssmsteer.mamba.arch import describe_model
from lm_eval_ssmsteer.mamba.compat import cache_keyword, output_cache
from lm_eval_ssmsteer.mamba.hybrid_configs import HYBRID_TYPES, hybrid_config, make_ssm_visible
from lm_eval_ssmsteer.mamba.sites import SITES
from lm_eval_ssmsteer.spec import POSITIONS, SteeringSpec
from lm_eval_ssmsteer.steering import steer

ARCHS = ("mamba", "mamba2", "falcon_mamba", *HYBRID_TYPES)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# kernel-name fragments, by mixer family: mamba-ssm's CUDA selective scan and Triton state update,
# Mamba-2's chunk scan
PREFILL_KERNEL = {"mamba1": "selective_scan_fwd", "mamba2": "chunk_scan_fwd"}
DECODE_KERNEL = "selective_scan_update"

# mamba-130m-hf / mamba2-130m widths; "tiny" keeps the structure at CPU-test size
SHAPES = {
    "130m": {"hidden": 768, "layers": 24, "vocab": 50280, "m2_heads": 24, "m2_state": 128, "chunk": 256},
    "tiny": {"hidden": 64, "layers": 6, "vocab": 512, "m2_heads": 4, "m2_state": 16, "chunk": 16},
}
SIZES = {  # (batch, prefill length, prompt length for decoding, new tokens)
    "130m": (4, 2048, 256, 8),
    "tiny": (2, 48, 12, 4),
}


def build(arch: str, shape: str, dtype: torch.dtype, device: str, attn: str | None = None) -> torch.nn.Module:
    """A random model of ``arch`` at ``shape``; ``attn``: a hybrid's attention implementation (transformers'
    default when None)."""
    s = SHAPES[shape]
    common = {
        "vocab_size": s["vocab"],
        "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"],
        "pad_token_id": 0,
        "eos_token_id": 0,
        "bos_token_id": 0,
    }
    if arch in HYBRID_TYPES:
        config = hybrid_config(
            arch,
            s["layers"],
            attention=range(3, s["layers"], 4),
            hidden=s["hidden"],
            vocab=s["vocab"],
            heads=s["m2_heads"],
            groups=1,
            state=s["m2_state"],
            chunk=s["chunk"],
        )
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                config, **({"attn_implementation": attn} if attn else {})
            )
        return make_ssm_visible(model).to(dtype).eval()
    if arch == "mamba2":
        config = Mamba2Config(
            **common,
            state_size=s["m2_state"],
            num_heads=s["m2_heads"],
            head_dim=2 * s["hidden"] // s["m2_heads"],
            n_groups=1,
            expand=2,
            chunk_size=s["chunk"],
        )
        cls = Mamba2ForCausalLM
    else:
        config = (MambaConfig if arch == "mamba" else FalconMambaConfig)(**common, state_size=16, expand=2)
        cls = MambaForCausalLM if arch == "mamba" else FalconMambaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(config)
    return model.to(dtype).eval()


def steered_layers(model: torch.nn.Module) -> list[int]:
    """Three layers at 1/6, 1/2 and 5/6 of the depth; a hybrid's first, middle and last Mamba layers."""
    info = describe_model(model)
    if info.mamba_layers is not None:
        mamba = info.mamba_layers
        return sorted({mamba[0], mamba[len(mamba) // 2], mamba[-1]})
    n = info.n_layers
    return sorted({n // 6, n // 2, (5 * n) // 6})


@torch.no_grad()
def prefill(model, spec, ids) -> torch.Tensor:
    with steer(model, spec):
        return model(ids).logits.float()


@torch.no_grad()
def decode(model, spec, prompt, new_tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, stacked per-step logits) of cached greedy decoding."""
    with steer(model, spec):
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences, torch.stack(out.logits, dim=1).float()


# element counts of the tensors held during the ``alloc`` decodes: odd sizes, so the blocks the decode
# gets differ from those of the plain runs
ALLOC_PERTURBATIONS = ((1,), (4_097, 33), (1_000_003,))


def decode_other_blocks(model, prompt, new_tokens, base_seq, base_dec) -> tuple[float, bool]:
    """The largest difference (``decode_diff``) of unsteered decodes, each run while tensors of other
    sizes are held, from the plain unsteered decode, and whether any of them chose other tokens."""
    worst, flipped = 0.0, False
    for sizes in ALLOC_PERTURBATIONS:
        held = [torch.empty(n, device=prompt.device) for n in sizes]
        seq, dec = decode(model, None, prompt, new_tokens)
        del held
        diff, other = decode_diff(seq, dec, base_seq, base_dec)
        worst, flipped = max(worst, diff), flipped or other
    return worst, flipped


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def decode_diff(seq, dec, base_seq, base_dec) -> tuple[float, bool]:
    """The largest logit difference of two greedy decodes over the steps both took from the same input,
    and whether their tokens differ. Per sequence, every step up to the first whose greedy token differs
    is compared, that step included (its logits came from equal inputs); after it the two decodes read
    different tokens, so their logits are not comparable. A last-place difference that flips a near-tie
    therefore counts as that difference, not as an infinite one."""
    steps = dec.shape[1]
    new, base_new = seq[:, -steps:], base_seq[:, -steps:]
    worst = 0.0
    for row in range(new.shape[0]):
        differ = torch.nonzero(new[row] != base_new[row])
        last = int(differ[0]) if len(differ) else steps - 1
        worst = max(worst, max_diff(dec[row, : last + 1], base_dec[row, : last + 1]))
    return worst, not torch.equal(seq, base_seq)


@torch.no_grad()
def kernel_launches(model, spec, ids) -> tuple[int, int]:
    """mamba-ssm scan kernel launches in a steered prefill and in one steered decode step."""
    kernel = PREFILL_KERNEL[describe_model(model).family]
    with steer(model, spec):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = model(ids, use_cache=True)
            torch.cuda.synchronize()
        prefill_count = sum(e.count for e in prof.key_averages() if kernel in e.key)
        nxt = out.logits[:, -1:].argmax(-1)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(nxt, use_cache=True, **{cache_keyword(model): output_cache(out)})
            torch.cuda.synchronize()
        decode_count = sum(e.count for e in prof.key_averages() if DECODE_KERNEL in e.key)
    return prefill_count, decode_count


def run_arch_dtype(
    arch: str, dtype_name: str, shape: str, device: str, attn: str | None = None
) -> tuple[list[dict], list[str]]:
    model = build(arch, shape, DTYPES[dtype_name], device, attn)
    layers = steered_layers(model)
    batch, length, prompt_len, new_tokens = SIZES[shape]
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (batch, length), generator=g).to(device)
    prompt = torch.randint(1, vocab, (batch, prompt_len), generator=g).to(device)

    base = prefill(model, None, ids)
    noise_prefill = max_diff(prefill(model, None, ids), base)
    base_seq, base_dec = decode(model, None, prompt, new_tokens)
    seq2, dec2 = decode(model, None, prompt, new_tokens)
    noise_decode, noise_flips = decode_diff(seq2, dec2, base_seq, base_dec)
    alloc_decode, alloc_flips = decode_other_blocks(model, prompt, new_tokens, base_seq, base_dec)
    decode_bound = max(noise_decode, alloc_decode)
    count_kernels = device == "cuda" and _has_kernels()

    rows, failures = [], []
    for site in SITES:
        for positions in POSITIONS:
            where = f"{arch}/{dtype_name}/{site}/{positions}"
            row = {"arch": arch, "dtype": dtype_name, "site": site, "positions": positions, "layers": layers}
            try:
                one = SteeringSpec.single(layer=layers, site=site, scale=1.0, positions=positions)
                more = SteeringSpec.single(layer=layers, site=site, scale=1.5, positions=positions)
                row["identity_prefill"] = max_diff(prefill(model, one, ids), base)
                seq, dec = decode(model, one, prompt, new_tokens)
                row["identity_decode"], row["identity_tokens_differ"] = decode_diff(
                    seq, dec, base_seq, base_dec
                )
                if torch.equal(seq, base_seq) and row["identity_decode"] > 0:  # the first step that differs
                    steps = (dec - base_dec).abs().flatten(2).amax(dim=(0, 2))
                    row["identity_decode_first_step"] = int(torch.nonzero(steps).min())
                steered = prefill(model, more, ids)
                _, steered_dec = decode(model, more, prompt, new_tokens)
                row["effect_prefill"] = max_diff(steered, base)
                row["effect_decode"] = max_diff(steered_dec, base_dec)
                row["finite"] = bool(torch.isfinite(steered).all() and torch.isfinite(steered_dec).all())
                if count_kernels and dtype_name == "bf16" and positions == "all":
                    row["prefill_kernels"], row["decode_kernels"] = kernel_launches(model, more, ids)
            except Exception as exc:  # a crash is a result of the matrix, reported with the rest
                row["error"] = f"{type(exc).__name__}: {exc}"
                failures.append(f"{where}: {row['error']}")
                rows.append(row)
                continue
            failures += check(
                row, where, noise_prefill, decode_bound, len(describe_model(model).steerable_layers)
            )
            rows.append(row)
    seq3, dec3 = decode(model, None, prompt, new_tokens)
    drift_decode, drift_flips = decode_diff(seq3, dec3, base_seq, base_dec)
    for row in rows:
        row["noise_prefill"], row["noise_decode"] = noise_prefill, noise_decode
        row["alloc_decode"], row["drift_decode"] = alloc_decode, drift_decode
        row["unsteered_tokens_differ"] = {
            "run_to_run": noise_flips,
            "alloc": alloc_flips,
            "drift": drift_flips,
        }
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows, failures


def check(row: dict, where: str, noise_prefill: float, noise_decode: float, n_mamba: int) -> list[str]:
    failures = []
    if row["identity_prefill"] > noise_prefill:
        failures.append(f"{where}: scale 1.0 prefill differs from unsteered by {row['identity_prefill']:.3g}")
    if row["identity_decode"] > noise_decode:
        failures.append(f"{where}: scale 1.0 decoding differs from unsteered by {row['identity_decode']:.3g}")
    if not row["finite"]:
        failures.append(f"{where}: scale 1.5 gives non-finite logits")
    prefill_moves = row["positions"] != "generated"
    if (row["effect_prefill"] > noise_prefill) != prefill_moves:
        failures.append(
            f"{where}: scale 1.5 prefill effect {row['effect_prefill']:.3g} contradicts positions"
        )
    if row["effect_decode"] <= noise_decode:
        failures.append(f"{where}: scale 1.5 changes no decoded logit")
    for key in ("prefill_kernels", "decode_kernels"):
        if key in row and row[key] < n_mamba:
            failures.append(f"{where}: {row[key]} of {n_mamba} Mamba layers ran the scan kernel ({key})")
    return failures


def _has_kernels() -> bool:
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        return False
    return True


def versions() -> dict[str, str | None]:
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    for pkg in ("mamba_ssm", "causal_conv1d"):
        try:
            out[pkg] = __import__(pkg).__version__
        except ImportError:
            out[pkg] = None
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return out


def table(rows: list[dict]) -> str:
    """One line per (arch, dtype, site): the worst identity difference over the positions modes."""
    lines = [
        "| arch | dtype | site | scale 1.0 vs unsteered: prefill | decode | run-to-run | unsteered decode: "
        "alloc / drift | ×1.5 effect: prefill (all) | decode (all) | scan kernels prefill/decode |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["arch"], row["dtype"], row["site"]), []).append(row)
    for (arch, dtype, site), group in groups.items():
        if any("error" in r for r in group):
            err = next(r["error"] for r in group if "error" in r)
            lines.append(f"| {arch} | {dtype} | {site} | CRASH: {err[:60]} | | | | | | |")
            continue
        full = next(r for r in group if r["positions"] == "all")
        kernels = f"{full['prefill_kernels']}/{full['decode_kernels']}" if "prefill_kernels" in full else "-"
        lines.append(
            f"| {arch} | {dtype} | {site} | {max(r['identity_prefill'] for r in group):.3g} | "
            f"{max(r['identity_decode'] for r in group):.3g} | "
            f"{full['noise_prefill']:.3g} / {full['noise_decode']:.3g} | "
            f"{full['alloc_decode']:.3g} / {full['drift_decode']:.3g} | {full['effect_prefill']:.3g} | "
            f"{full['effect_decode']:.3g} | {kernels} |"
        )
    return "\n".join(lines)


def _write(path: str, info: dict, shape: str, rows: list[dict], failures: list[str], done: bool) -> None:
    """The JSON result, replaced whole (a temporary file renamed over it); ``complete`` is false until
    every requested (arch, dtype) has run."""
    doc = {"versions": info, "shape": shape, "complete": done, "rows": rows, "failures": failures}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="130m")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--out", help="write rows, failures and versions as JSON here")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms (warn only) and CUBLAS_WORKSPACE_CONFIG=:4096:8",
    )
    parser.add_argument("--attn", choices=["sdpa", "eager"], help="a hybrid's attention implementation")
    args = parser.parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --shape tiny")
    start = time.time()
    info = versions()
    info["deterministic"] = str(args.deterministic)
    info["attn"] = args.attn or "default"
    rows, failures = [], []
    for arch in args.archs:
        for dtype_name in args.dtypes:
            r, f = run_arch_dtype(arch, dtype_name, args.shape, args.device, args.attn)
            rows += r
            failures += f
            print(f"{arch} {dtype_name}: {len(f)} failures ({time.time() - start:.0f} s)", file=sys.stderr)
            if args.out:  # after every (arch, dtype): a run cut short keeps the rows it finished
                _write(args.out, info, args.shape, rows, failures, done=False)
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"shape {args.shape}, (batch, prefill, prompt, new tokens) = {SIZES[args.shape]}")
    print(table(rows))
    for failure in failures:
        print("FAIL", failure)
    if args.out:
        _write(args.out, info, args.shape, rows, failures, done=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
