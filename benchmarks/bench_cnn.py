"""Cost of Grappa on CNN backbones: adaptors after every stage versus after every block.

For each granularity, M* (N adaptor sets with D'_l = min(D', D_l - 1), attention fusion)
against the plain backbone M, measured side by side in one run: layers L, adaptor and
fusion parameters, FLOPs (``torch.utils.flop_counter``), median CPU latency, and peak
memory of one training step (adaptors trainable; ``tracemalloc`` does not see torch's
allocator, so the autograd-saved activations are summed instead).

Prints a Markdown table. The default backbone is EfficientNet-Lite0 with random weights
(costs do not depend on weight values; no download, no optional package).

    PYTHONPATH=src python benchmarks/bench_cnn.py                           # tf_efficientnet_lite0, 224 px
    PYTHONPATH=src python benchmarks/bench_cnn.py --model resnet50 --small
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from grappa_cli.model import BackboneSpec, GrappaModel, new_adaptor_set
from grappa_cli.model.backbones.cnn import build_cnn_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import counted_flops, median_seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm CNN name (random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--sets", type=int, default=8, help="N adaptor sets")
    parser.add_argument("--bottleneck", type=int, default=64, help="D' (narrow layers use D_l - 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--small", action="store_true", help="quick run: batch 2, 160 px, 3 repeats")
    return parser.parse_args()


def saved_activation_bytes(model: GrappaModel, images: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training step (distinct storages)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images).sum()
    return sum(storages.values())


def trained_like_sets(backbone, count: int, bottleneck: int) -> list:
    """``count`` adaptor sets with non-zero up-projections, as after training (speed does not
    depend on the values, but a zero-initialised set would skip nothing and look untrained)."""
    sets = [new_adaptor_set(backbone, bottleneck, seed=i) for i in range(count)]
    with torch.no_grad():
        for s in sets:
            for adaptor in s.layers:
                adaptor.up.weight.normal_(std=0.02)
    return sets


def measure(backbone, granularity: str, images: torch.Tensor, args: argparse.Namespace) -> dict:
    """One granularity: sizes, FLOPs, latency and training activations of M and M*."""
    sets = trained_like_sets(backbone, args.sets, args.bottleneck)
    plain = GrappaModel.backbone_only(backbone).eval()
    fused = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention").eval()
    with torch.inference_mode():
        latency = median_seconds({"M": lambda: plain(images), "M*": lambda: fused(images)}, args.repeats)
        flops_plain = counted_flops(lambda: plain(images))
        flops_fused = counted_flops(lambda: fused(images))
    single = GrappaModel.with_adaptor_sets(backbone, sets[:1], fusion=None)
    single.set_trainable(adaptors=True, fusion=False)
    single.train()
    return {
        "granularity": granularity,
        "layers": backbone.num_layers,
        "dims": backbone.layer_dims,
        "bottlenecks": sets[0].bottlenecks,
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "set_params": sum(p.numel() for p in sets[0].parameters()),
        "fusion_params": sum(p.numel() for p in fused.fusion_parameters()),
        "flops": (flops_plain, flops_fused),
        "latency": (latency["M"], latency["M*"]),
        "saved": saved_activation_bytes(single, images),
    }


def main() -> None:
    args = parse_args()
    if args.small:
        args.batch, args.img_size, args.repeats = 2, 160, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    spec = BackboneSpec(name=args.model, pretrained=False)

    rows = [measure(build_cnn_backbone(spec, granularity=g), g, images, args) for g in ("stage", "block")]

    print(
        f"\nCPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.model} (random weights), "
        f"batch {args.batch}, {args.img_size} px, N = {args.sets}, D' = {args.bottleneck}, attention fusion\n"
    )
    for row in rows:
        print(f"- {row['granularity']}: D_l = {row['dims']}, D'_l = {row['bottlenecks']}")
    print()
    print("| adapted after every | L | params of one adaptor set | fusion params (N = 8) | FLOPs M* / M "
          "| latency M / M* | ratio | autograd-saved activations, 1 set training |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        (fp, ff), (lp, lf) = row["flops"], row["latency"]
        share = row["set_params"] / row["backbone_params"]
        print(
            f"| {row['granularity']} | {row['layers']} | {row['set_params'] / 1e3:.1f} k ({share:.1%} of M) | "
            f"{row['fusion_params'] / 1e3:.1f} k | {ff / fp:.3f}x ({fp / 1e9:.2f} -> {ff / 1e9:.2f} GFLOP) | "
            f"{lp * 1e3:.1f} ms / {lf * 1e3:.1f} ms | **{lf / lp:.2f}x** | {row['saved'] / 2**20:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
