"""Activation memory one training example keeps for backward, per arch, in float32 and under bf16
autocast: the figures behind `cluster.ACTIVATION_GIB`, which sizes each trial's share of a GPU.

    python -m benchmarks.activation_memory [--smoke]

Each arch runs one forward pass at its default search space's largest input (smallest window,
most mel bands, longest crop) with saved-tensor hooks counting the bytes autograd keeps (each
storage once); the per-example figure is half of batch 4 minus batch 2 (batch norm needs two
examples in training), so weights (and their bf16
copies) drop out. The trial trains under bf16 autocast on CUDA (`trial.loop.autocast`); this runs
torch's CPU autocast, whose op lists differ from CUDA's in places (normalisation and some
pointwise ops may stay float32 on one and not the other), so the bf16 figure is an estimate
that benchmarks/gpu_check.py's measured peak on a GPU confirms or corrects.

Writes results/benchmarks/activation_memory_cpu.json and .md.
"""

from __future__ import annotations

import torch

from benchmarks import _common as C
from mgc_ray.config import CACHE_SAMPLE_RATE
from mgc_ray.errors import run_cli
from mgc_ray.models import build_model, list_models
from mgc_ray.trial.loop import autocast

GIB = 2**30


def largest_input(arch: str) -> dict:
    """The ModelConfig fields of `arch`'s default search space's largest input per example."""
    from mgc_ray.search.space import load_space

    space = load_space(arch)
    out = {}
    for key, pick in (("window", min), ("n_mels", max), ("crop_seconds", max)):
        entry = space.space.get(key)
        out[key] = pick(entry.choices()) if entry is not None else space.paper_point()[key]
    return out


def saved_bytes(model: torch.nn.Module, wave: torch.Tensor, bf16: bool) -> int:
    """Bytes autograd saves for backward in one forward pass of `model` on `wave` (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(wave.device, bf16):
        model(wave)
    return sum(seen.values())


def per_example_gib(arch: str, fields: dict, bf16: bool) -> float:
    """Activation GiB per training example of `arch` with ModelConfig `fields` (batch 4 minus batch 2, halved)."""
    torch.manual_seed(0)
    model = build_model(arch, sample_rate=CACHE_SAMPLE_RATE, **fields)
    n = model.config.crop_samples
    two, four = (saved_bytes(model, 0.3 * torch.randn(b, n), bf16) for b in (2, 4))
    return (four - two) / 2 / GIB


def main(argv=None) -> int:
    p = C.parser("python -m benchmarks.activation_memory", __doc__, device=False, ray=False)
    p.add_argument("--arch", action="append", choices=list_models(), help="arch to measure (default: all)")
    args = p.parse_args(argv)
    archs = args.arch or list_models()
    report = {"machine": C.machine(torch.device("cpu")), "smoke": args.smoke, "archs": {}}
    rows = []
    for arch in archs:
        fields = {"window": 2048, "n_mels": 32, "crop_seconds": 1.0} if args.smoke else largest_input(arch)
        f32, bf16 = (per_example_gib(arch, fields, b) for b in (False, True))
        report["archs"][arch] = {"input": fields, "float32_gib": f32, "bf16_gib": bf16, "bf16_part": bf16 / f32}
        rows.append([arch, fields, C.fmt(f32, 3), C.fmt(bf16, 3), f"{bf16 / f32:.2f}"])
        print(f"{arch}: float32 {f32:.4f} GiB, bf16 {bf16:.4f} GiB per example", flush=True)
    md = [
        C.title("Activation memory per training example, float32 and bf16 autocast", args.smoke),
        "",
        "`python -m benchmarks.activation_memory`: one forward pass per arch at its default search space's",
        "largest input, the bytes autograd saves for backward counted by saved-tensor hooks (each storage once),",
        "half of batch 4 minus batch 2 (weights drop out). bf16: torch's CPU autocast, an estimate of CUDA's (their op",
        "lists differ in places); `cluster.ACTIVATION_GIB` holds the bf16 column, rounded up.",
        "",
        *C.md_table(["arch", "input (ModelConfig)", "float32 GiB", "bf16 GiB", "bf16 / float32"], rows),
    ]
    C.write_report(C.out_dir(args), "activation_memory", report, md)
    return 0


if __name__ == "__main__":
    run_cli(main)
