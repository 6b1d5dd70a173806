"""Cost of Grappa's adaptors and fusion on the CPU, measured side by side in one run.

1. Latency of M* (N adaptor sets, bottleneck D', attention fusion) against the plain
   backbone M on ViT-S/16 (random weights, no download), with the ratio the FLOP count
   predicts (counted analytically and with ``torch.utils.flop_counter``).
2. The batched :class:`AdaptorBank` against a Python loop over N separate ``Adaptor``
   modules computing the same alpha-weighted sum (forward, and forward + backward).

Prints a Markdown table. ``--small`` runs a quick, smaller configuration.

    PYTHONPATH=src python benchmarks/bench_model.py            # ViT-S/16, batch 8, 224 px
    PYTHONPATH=src python benchmarks/bench_model.py --small
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from grappa_cli.model import Adaptor, AdaptorBank, BackboneSpec, GrappaModel, build_backbone, new_adaptor_set


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm ViT name (random weights)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--sets", type=int, default=8, help="N adaptor sets")
    parser.add_argument("--bottleneck", type=int, default=64, help="D'")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--small", action="store_true", help="quick run: batch 2, 112 px, 3 repeats")
    return parser.parse_args()


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, runs interleaved so machine noise hits all alike."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def analytic_macs(
    tokens: int, dim: int, depth: int, patch_in: int, sets: int, bottleneck: int
) -> tuple[int, int]:
    """Multiply-accumulates per image of the ViT and of the Grappa additions.

    ViT block: qkv 3TD^2 + scores T^2D + attention-weighted values T^2D + projection TD^2 +
    MLP 8TD^2. Grappa layer: N down projections T*D*N*D', the alpha-weighted up projection
    T*N*D'*D, pooled keys N*D'*D, Q D^2 and K N*D^2.
    """
    grid = tokens - 1
    vit = grid * patch_in * dim + depth * (12 * tokens * dim * dim + 2 * tokens * tokens * dim)
    grappa = depth * (2 * tokens * dim * sets * bottleneck + sets * bottleneck * dim + (sets + 1) * dim * dim)
    return vit, grappa


def measure(
    model_name: str = "vit_small_patch16_224", batch: int = 8, img_size: int = 224, sets: int = 8,
    bottleneck: int = 64, repeats: int = 7,
) -> dict:
    """M* vs M latency and FLOPs, and the batched adaptor bank vs a loop, side by side (seconds, counts)."""
    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec(name=model_name, pretrained=False, kwargs={"img_size": img_size}))
    adaptor_sets = [new_adaptor_set(backbone, bottleneck, seed=i) for i in range(sets)]
    with torch.no_grad():  # trained-like, non-zero adaptors (speed does not depend on values)
        for s in adaptor_sets:
            for adaptor in s.layers:
                adaptor.up.weight.normal_(std=0.02)
    plain = GrappaModel.backbone_only(backbone).eval()
    fused = GrappaModel.with_adaptor_sets(backbone, adaptor_sets, fusion="attention").eval()
    images = torch.randn(batch, 3, img_size, img_size)

    with torch.inference_mode():
        latency = median_seconds({"M": lambda: plain(images), "M*": lambda: fused(images)}, repeats)
        flops_plain = counted_flops(lambda: plain(images))
        flops_fused = counted_flops(lambda: fused(images))

    model = backbone.model
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    patch = model.patch_embed.patch_size[0]
    vit_macs, grappa_macs = analytic_macs(
        tokens, backbone.embed_dim, backbone.num_layers, 3 * patch * patch, sets, bottleneck
    )

    # Bank vs loop on one layer's activations.
    dim, n = backbone.layer_dims[0], sets
    bank = AdaptorBank.from_adaptors([s.layers[0] for s in adaptor_sets])
    loop_adaptors: list[Adaptor] = [bank.adaptor(i) for i in range(n)]
    h = torch.randn(batch, tokens, dim)
    alpha = torch.softmax(torch.randn(batch, n), dim=-1)

    def bank_fwd() -> torch.Tensor:
        return bank.mix(bank.hidden(h), alpha)

    def loop_fwd() -> torch.Tensor:
        out = torch.zeros_like(h)
        for i, adaptor in enumerate(loop_adaptors):
            out = out + alpha[:, i, None, None] * adaptor(h)
        return out

    torch.testing.assert_close(bank_fwd(), loop_fwd(), rtol=1e-4, atol=1e-5)
    h_grad = h.clone().requires_grad_(True)

    def bank_train() -> None:
        bank.mix(bank.hidden(h_grad), alpha).pow(2).sum().backward()

    def loop_train() -> None:
        out = torch.zeros_like(h_grad)
        for i, adaptor in enumerate(loop_adaptors):
            out = out + alpha[:, i, None, None] * adaptor(h_grad)
        out.pow(2).sum().backward()

    with torch.inference_mode():
        fwd = median_seconds({"bank": bank_fwd, "loop": loop_fwd}, max(repeats, 5) * 4)
    train = median_seconds({"bank": bank_train, "loop": loop_train}, max(repeats, 5) * 4)
    return {
        "model": model_name, "batch": batch, "img_size": img_size, "tokens": tokens, "dim": dim,
        "layers": backbone.num_layers, "sets": n, "bottleneck": bottleneck, "repeats": repeats,
        "threads": torch.get_num_threads(), "latency_M_s": latency["M"], "latency_Mstar_s": latency["M*"],
        "flops_M": flops_plain, "flops_Mstar": flops_fused, "macs_M": vit_macs, "macs_Mstar": vit_macs + grappa_macs,
        "bank_fwd_s": fwd["bank"], "loop_fwd_s": fwd["loop"], "bank_train_s": train["bank"],
        "loop_train_s": train["loop"],
    }


def main() -> None:
    args = parse_args()
    if args.small:
        args.batch, args.img_size, args.repeats = 2, 112, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    r = measure(args.model, args.batch, args.img_size, args.sets, args.bottleneck, args.repeats)
    print(
        f"\nCPU, {r['threads']} threads, torch {torch.__version__}; "
        f"{r['model']} (random weights), batch {r['batch']}, {r['img_size']} px, "
        f"T = {r['tokens']}, D = {r['dim']}, L = {r['layers']}, N = {r['sets']}, D' = {r['bottleneck']}, "
        "attention fusion\n"
    )
    print("| measurement | M / loop | M* / bank | ratio |")
    print("|---|---|---|---|")
    print(
        f"| latency per batch (median of {r['repeats']}) | {r['latency_M_s'] * 1e3:.1f} ms | "
        f"{r['latency_Mstar_s'] * 1e3:.1f} ms | **{r['latency_Mstar_s'] / r['latency_M_s']:.3f}x** |"
    )
    print(
        f"| FLOPs per batch (torch flop counter) | {r['flops_M'] / 1e9:.2f} G | {r['flops_Mstar'] / 1e9:.2f} G | "
        f"{r['flops_Mstar'] / r['flops_M']:.3f}x |"
    )
    print(
        f"| MACs per image (analytic) | {r['macs_M'] / 1e9:.3f} G | {r['macs_Mstar'] / 1e9:.3f} G | "
        f"{r['macs_Mstar'] / r['macs_M']:.3f}x |"
    )
    print(
        f"| adaptors of one layer, forward | {r['loop_fwd_s'] * 1e3:.2f} ms | {r['bank_fwd_s'] * 1e3:.2f} ms | "
        f"**{r['loop_fwd_s'] / r['bank_fwd_s']:.2f}x faster** |"
    )
    print(
        f"| adaptors of one layer, forward + backward | {r['loop_train_s'] * 1e3:.2f} ms | "
        f"{r['bank_train_s'] * 1e3:.2f} ms | **{r['loop_train_s'] / r['bank_train_s']:.2f}x faster** |"
    )
    print(
        "\ntorch's flop counter does not count the CPU scaled-dot-product-attention kernel "
        "(2·T²·D MACs per layer); the analytic row includes it."
    )


if __name__ == "__main__":
    main()
