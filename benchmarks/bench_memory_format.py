"""CNN backbones in channels-last memory against the NCHW layout, side by side in one run.

grappa keeps a timm CNN in ``torch.channels_last`` (``grappa_cli.model.backbones.cnn``): its stages then
take the ``[B, H, W, C]`` tensors between Grappa layers without a copy, and oneDNN's depthwise
and 1x1 convolutions run faster in that layout. This measures what it buys on the passes grappa
makes, against the same model converted back to NCHW (the layout before): the plain backbone M
(extraction, evaluation of M), M* with N adaptor sets and attention fusion (evaluation of a fused
model), one training step of a single adaptor set (``grappa adapt``) and one of the fusion with the
adaptors frozen (``grappa fuse``; gradients flow through the whole backbone). Medians of
interleaved runs, so machine noise hits both layouts alike. Random weights: speed does not
depend on weight values.

    PYTHONPATH=src python benchmarks/bench_memory_format.py --threads 1              # Lite0, 96 px
    PYTHONPATH=src python benchmarks/bench_memory_format.py --threads 1 --img-size 224 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from grappa_cli.model import BackboneSpec, GrappaModel
from grappa_cli.model.backbones import cnn as cnn_mod
from grappa_cli.model.backbones.cnn import build_cnn_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cnn import trained_like_sets
from bench_model import median_seconds


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0", help="timm CNN name (random weights)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--sets", type=int, default=4, help="N adaptor sets of M*")
    parser.add_argument("--bottleneck", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--small", action="store_true", help="quick run: batch 4, 64 px, 2 repeats")
    return parser.parse_args()


@contextlib.contextmanager
def nchw_layout() -> Iterator[None]:
    """The module's layout helpers as they were before channels-last: contiguous NCHW tensors."""
    saved = cnn_mod.to_channels_first, cnn_mod.channels_last_images
    cnn_mod.to_channels_first = lambda x: x.permute(0, 3, 1, 2).contiguous()
    cnn_mod.channels_last_images = lambda images: images.contiguous()
    try:
        yield
    finally:
        cnn_mod.to_channels_first, cnn_mod.channels_last_images = saved


def passes(backbone, images: torch.Tensor, args: argparse.Namespace) -> dict[str, Callable[[], object]]:
    """The four passes measured, on ``backbone`` as it is laid out now."""
    sets = trained_like_sets(backbone, args.sets, args.bottleneck)
    plain = GrappaModel.backbone_only(backbone).eval()
    fused = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention").eval()
    single = GrappaModel.with_adaptor_sets(backbone, sets[:1], fusion=None)
    single.set_trainable(adaptors=True, fusion=False)
    attention = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention")
    attention.set_trainable(adaptors=False, fusion=True)

    def infer(model: GrappaModel) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return model(images)
        return run

    def train_step(model: GrappaModel) -> Callable[[], object]:
        def run() -> object:
            model.zero_grad(set_to_none=True)
            model(images).square().sum().backward()
            return None
        return run

    return {"M, inference": infer(plain), f"M* ({args.sets} sets), inference": infer(fused),
            "adapt step (1 set)": train_step(single), f"fuse step ({args.sets} sets)": train_step(attention)}


def main() -> None:
    args = parse_args()
    if args.small:
        args.batch, args.img_size, args.repeats = 4, 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size)
    spec = BackboneSpec(name=args.model, pretrained=False)
    last = build_cnn_backbone(spec)
    first = build_cnn_backbone(spec)
    first.model.to(memory_format=torch.contiguous_format)
    now, before = passes(last, images, args), passes(first, images, args)

    def in_nchw(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with nchw_layout():
                return fn()
        return run

    timed = {**{f"last/{k}": fn for k, fn in now.items()}, **{f"nchw/{k}": in_nchw(fn) for k, fn in before.items()}}
    seconds = median_seconds(timed, args.repeats)
    with torch.inference_mode(), nchw_layout():
        reference = GrappaModel.backbone_only(first).eval()(images)
    with torch.inference_mode():
        difference = float((GrappaModel.backbone_only(last).eval()(images) - reference).abs().max())
    print(f"\nCPU, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.model} (random weights), "
          f"batch {args.batch}, {args.img_size} px; largest difference of z between the layouts: {difference:.1e}\n")
    print("| pass | NCHW | channels-last | channels-last / NCHW |")
    print("|---|---|---|---|")
    for name in now:
        a, b = seconds[f"nchw/{name}"], seconds[f"last/{name}"]
        print(f"| {name} | {a * 1e3:.0f} ms | {b * 1e3:.0f} ms | **{b / a:.2f}x** |")


if __name__ == "__main__":
    main()
