"""On a CUDA machine with mamba-ssm: steered layers stay on the CUDA kernels and agree with CPU/torch.

For Mamba-1 and Mamba-2 (mamba-130m-like widths, 4 layers, random weights) and every site, it
1. profiles a steered prefill and a steered decode step and counts the mamba-ssm kernel launches:
   every layer, steered or not, must launch the scan kernel (a torch-scan fallback launches none);
2. compares steered logits on the GPU kernel path (fp32 and bf16) with the same model, same
   steering, on the CPU torch path in fp32 (computed first in a child process that hides the kernels,
   because transformers binds them at import).
Prints one table and exits 1 if a check fails.

    python benchmarks/gpu_check.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from _kernels import hide_kernels, kernel_versions

if "--reference" in sys.argv:
    hide_kernels()

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402

from lm_eval_ssmsteer.mamba.arch import describe_model  # noqa: E402
from lm_eval_ssmsteer.mamba.compat import cache_keyword, output_cache  # noqa: E402
from lm_eval_ssmsteer.mamba.sites import SITES  # noqa: E402
from lm_eval_ssmsteer.spec import SteeringSpec  # noqa: E402
from lm_eval_ssmsteer.steering import steer  # noqa: E402

# kernel-name fragments: mamba-ssm's CUDA selective scan, its Triton state update, Mamba-2's chunk scan
PREFILL_KERNEL = {"mamba": "selective_scan_fwd", "mamba2": "chunk_scan_fwd"}
DECODE_KERNEL = {"mamba": "selective_scan_update", "mamba2": "selective_scan_update"}
N_LAYERS = 4


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "mamba":
        config = MambaConfig(vocab_size=1024, hidden_size=768, num_hidden_layers=N_LAYERS, state_size=16)
        return MambaForCausalLM(config).eval()
    config = Mamba2Config(
        vocab_size=1024,
        hidden_size=768,
        num_hidden_layers=N_LAYERS,
        state_size=128,
        num_heads=24,
        head_dim=64,
        n_groups=1,
        chunk_size=256,
    )
    return Mamba2ForCausalLM(config).eval()


def kernel_launches(model, spec, ids, fragment: str, decode: bool) -> int:
    with torch.no_grad(), steer(model, spec):
        if decode:
            out = model(ids, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(nxt, use_cache=True, **{cache_keyword(model): output_cache(out)})
                torch.cuda.synchronize()
        else:
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                model(ids)
                torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if fragment in e.key)


def cases(arch: str, model) -> list[tuple[str, SteeringSpec | None]]:
    width_of = describe_model(model).site_width
    out: list[tuple[str, SteeringSpec | None]] = [("unsteered", None)]
    for site in SITES:
        channels = list(range(0, width_of(site), 3))
        out.append((site, SteeringSpec.single(layer=[1, 2], site=site, channels=channels, scale=3.0)))
    return out


def inputs() -> torch.Tensor:
    return torch.randint(1, 1024, (2, 300), generator=torch.Generator().manual_seed(0))


def write_reference(path: str) -> None:
    """CPU, fp32, torch fallback: logits for every (arch, case)."""
    ref = {}
    with torch.no_grad():
        for arch in ("mamba", "mamba2"):
            model = build(arch)
            for name, spec in cases(arch, model):
                with steer(model, spec):
                    ref[f"{arch}/{name}"] = model(inputs()).logits
    torch.save(ref, path)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:
        write_reference(args.reference)
        return 0
    assert torch.cuda.is_available(), "needs a CUDA device"
    with tempfile.TemporaryDirectory() as tmp:
        ref_path = f"{tmp}/reference.pt"
        subprocess.run([sys.executable, __file__, "--reference", ref_path], check=True)
        reference = torch.load(ref_path)

    rows, failures = [], []
    ids = inputs()
    for arch in ("mamba", "mamba2"):
        gpu32 = build(arch).cuda()
        gpu16 = build(arch).to("cuda", torch.bfloat16)
        base_cpu = reference[f"{arch}/unsteered"]
        with torch.no_grad():
            unsteered16 = gpu16(ids.cuda()).logits
            noise32 = rel(gpu32(ids.cuda()).logits, base_cpu)
        for site, spec in cases(arch, gpu32)[1:]:
            prefill = kernel_launches(gpu16, spec, ids.cuda(), PREFILL_KERNEL[arch], decode=False)
            decode = kernel_launches(gpu16, spec, ids.cuda(), DECODE_KERNEL[arch], decode=True)
            ref = reference[f"{arch}/{site}"]
            with torch.no_grad():
                with steer(gpu32, spec):
                    k32 = gpu32(ids.cuda()).logits
                with steer(gpu16, spec):
                    k16 = gpu16(ids.cuda()).logits
            row = {
                "arch": arch,
                "site": site,
                "prefill_scan_kernels": prefill,
                "decode_update_kernels": decode,
                "rel_err_fp32_kernel_vs_cpu": rel(k32, ref),
                "rel_err_bf16_kernel_vs_cpu": rel(k16, ref),
                "steering_effect_cpu": rel(ref, base_cpu),
                "bf16_noise_unsteered": rel(unsteered16, base_cpu),
                "fp32_noise_unsteered": noise32,
            }
            rows.append(row)
            if prefill < N_LAYERS or decode < N_LAYERS:
                failures.append(
                    f"{arch}/{site}: a layer left the kernel path ({prefill}, {decode} of {N_LAYERS})"
                )
            if row["rel_err_fp32_kernel_vs_cpu"] > max(1e-3, 3 * noise32):
                failures.append(f"{arch}/{site}: fp32 kernel vs CPU {row['rel_err_fp32_kernel_vs_cpu']:.2e}")
            if row["rel_err_bf16_kernel_vs_cpu"] > max(5e-2, 3 * row["bf16_noise_unsteered"]):
                failures.append(f"{arch}/{site}: bf16 kernel disagrees with CPU beyond bf16 noise")

    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, kernels {kernel_versions()}, "
        f"{torch.cuda.get_device_name()}"
    )
    print(
        "| arch | site | scan kernels (prefill) | update kernels (decode) | fp32 kernel vs CPU | "
        "fp32 noise (unsteered) | bf16 kernel vs CPU | bf16 noise (unsteered) | steering effect |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['site']} | {r['prefill_scan_kernels']}/{N_LAYERS} | "
            f"{r['decode_update_kernels']}/{N_LAYERS} | {r['rel_err_fp32_kernel_vs_cpu']:.1e} | "
            f"{r['fp32_noise_unsteered']:.1e} | "
            f"{r['rel_err_bf16_kernel_vs_cpu']:.1e} | {r['bf16_noise_unsteered']:.1e} | "
            f"{r['steering_effect_cpu']:.1e} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "failures": failures}, f, indent=1)
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
