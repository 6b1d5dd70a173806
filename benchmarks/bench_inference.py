"""Inference and training throughput of the model on the CPU, side by side in one run.

1. ``torch.compile`` vs eager: the backbone on a fixed batch (what ``GRAPPA_COMPILE=1`` does
   in ``grappa extract``/evaluation), with the compile time and the largest output difference;
2. ``grappa extract`` vs a bare ``model(x)`` loop: the extraction code path (JPEG decoding in
   DataLoader workers, the eval transform, the model, chunked store writes) against the same
   model on the same images decoded and transformed beforehand; also the decode + transform
   rate of one process, which is what extraction shares the cores with;
3. one adaptor set training vs backbone inference: images/s of a training step (one adaptor
   set, norm-softmax over k classes, Adam) against the frozen backbone's inference, and the
   FLOPs of each (torch's flop counter): the backward pass through the frozen backbone
   computes activation gradients only, about 1x the forward, where training the backbone too
   would add ~1x more for the weight gradients.

    PYTHONPATH=src python benchmarks/bench_inference.py            # ViT-S/16 at 224 px
    PYTHONPATH=src python benchmarks/bench_inference.py --small    # 112 px, fewer images
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _backbone(model: str, img_size: int, **kwargs: object):
    from grappa_cli.model import BackboneSpec, build_backbone

    torch.manual_seed(0)
    return build_backbone(BackboneSpec(name=model, pretrained=False, kwargs={"img_size": img_size, **kwargs}))


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved so that machine noise hits all alike."""
    from bench_model import median_seconds

    return median_seconds(fns, repeats)


class StepTimes:
    """A reporter that records when each batch finished (to measure throughput after start-up)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "it") -> Iterator[StepTimes]:
        yield self

    def advance(self, n: float = 1) -> None:
        done = self.marks[-1][1] if self.marks else 0.0
        self.marks.append((time.perf_counter(), done + n))

    def update(self, **fields: object) -> None:
        pass

    def log(self, message: str) -> None:
        pass

    def steady_rate(self) -> float:
        """Items/s from the first finished batch to the last (worker start-up and the first batch excluded)."""
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def _flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def compiled_vs_eager(model: str = "vit_small_patch16_224", img_size: int = 224, batch: int = 8,
                      repeats: int = 5, depth: int | None = None) -> dict:
    """Seconds per batch of the backbone eager and through ``grappa_cli.runtime.maybe_compile``.

    ``depth`` builds a shallower ViT (compile time grows with the number of blocks).
    """
    from grappa_cli.model import GrappaModel
    from grappa_cli.runtime import maybe_compile

    extra = {"depth": depth} if depth else {}
    net = GrappaModel.backbone_only(_backbone(model, img_size, **extra)).eval()
    images = torch.randn(batch, 3, img_size, img_size)
    compiled = maybe_compile(net, True)
    with torch.inference_mode():
        start = time.perf_counter()
        out_compiled = compiled(images)
        compile_s = time.perf_counter() - start
        out_eager = net(images)
        times = _interleaved({"eager": lambda: net(images), "compiled": lambda: compiled(images)}, repeats)
        eager_s, compiled_s = times["eager"], times["compiled"]
    return {"batch": batch, "img_size": img_size, "depth": len(net.backbone.layer_dims), "eager_s": eager_s,
            "compiled_s": compiled_s,
            "compile_s": compile_s, "max_abs_diff": float((out_compiled - out_eager).abs().max()),
            "speedup": eager_s / compiled_s}


def extract_vs_bare(model: str = "vit_small_patch16_224", img_size: int = 224, images: int = 256,
                    batch: int = 32, workers: int = 2) -> dict:
    """Images/s of ``run_embedding`` on JPEG files vs ``model(x)`` over the same images pre-decoded."""
    from bench_input import make_photos
    from grappa_cli.data.images import decode_min_side, load_rgb
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.pipeline.stages.embed import EmbedJob, run_embedding
    from grappa_cli.storage.store import Store

    backbone = _backbone(model, img_size)
    transform = eval_transform(backbone.data_config)
    min_side = decode_min_side(backbone.data_config)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp) / "photos", images)
        transform(load_rgb(paths[0], min_side))  # first-call costs outside the timing
        start = time.perf_counter()
        tensors = torch.stack([transform(load_rgb(p, min_side)) for p in paths])
        decode_s = time.perf_counter() - start
        net = backbone.eval()
        with torch.inference_mode():
            net(tensors[:batch])  # warm
            start = time.perf_counter()
            bare = [net(tensors[i : i + batch]) for i in range(0, len(tensors), batch)]
            bare_s = time.perf_counter() - start
        rates, steady = {}, {}
        for n_workers in sorted({0, workers}):
            store = Store(Path(tmp) / f"store{n_workers}.zarr")
            job = EmbedJob("features/train", "extract", paths, None, {"bench": True}, {"images": "bench"})
            marks = StepTimes()
            start = time.perf_counter()
            result = run_embedding(store, job, backbone, transform, dim=backbone.embed_dim, dtype="float32",
                                   chunk_rows=batch * 4, batch_size=batch, num_workers=n_workers,
                                   device=torch.device("cpu"), min_side=min_side, force=True, reporter=marks)
            rates[n_workers] = images / (time.perf_counter() - start)
            steady[n_workers] = marks.steady_rate()
            stored = store.read("features/train/embeddings")
        expected = torch.cat(bare).numpy()
    bare_rate = images / bare_s
    return {"images": images, "batch": batch, "workers": workers, "bare_img_s": bare_rate,
            "extract_img_s": rates[workers], "extract_steady_img_s": steady[workers],
            "extract_inline_img_s": rates[0], "extract_inline_steady_img_s": steady[0],
            "decode_img_s": images / decode_s, "ratio": rates[workers] / bare_rate,
            "ratio_steady": steady[workers] / bare_rate, "ratio_inline_steady": steady[0] / bare_rate,
            "max_abs_diff": float(np.abs(stored - expected).max()), "bad": len(result.bad)}


def train_vs_inference(model: str = "vit_small_patch16_224", img_size: int = 224, batch: int = 16,
                       classes: int = 16384, bottleneck: int = 64, repeats: int = 5) -> dict:
    """Images/s of one adaptor-set training step vs backbone inference, with their FLOPs."""
    from grappa_cli.model import GrappaModel, new_adaptor_set
    from grappa_cli.train.optim.losses import NormSoftmaxLoss

    backbone = _backbone(model, img_size)
    plain = GrappaModel.backbone_only(backbone).eval()
    adapted = GrappaModel.with_adaptor_sets(backbone, [new_adaptor_set(backbone, bottleneck)], fusion=None)
    adapted.set_trainable(adaptors=True, fusion=False)
    criterion = NormSoftmaxLoss(backbone.embed_dim, classes, scale=20.0)
    optimizer = torch.optim.Adam(adapted.trainable_parameters() + list(criterion.parameters()), lr=1e-3)
    images = torch.randn(batch, 3, img_size, img_size)
    labels = torch.randint(0, classes, (batch,))

    def infer() -> None:
        with torch.inference_mode():
            plain(images)

    def step() -> None:
        loss = criterion(adapted(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward_only() -> None:
        criterion(adapted(images), labels)

    times = _interleaved({"infer": infer, "train": step, "forward": forward_only}, repeats)
    infer_s, train_s, forward_s = times["infer"], times["train"], times["forward"]
    one, label = images[:1], labels[:1]
    forward = _flops(lambda: plain(one))
    adapted_forward = _flops(lambda: criterion(adapted(one), label))
    frozen_train = _flops(lambda: criterion(adapted(one), label).backward())
    for p in backbone.parameters():  # what training the backbone's weights too would cost
        p.requires_grad_(True)
    full_train = _flops(lambda: criterion(adapted(one), label).backward())
    backbone.freeze()
    optimizer.zero_grad(set_to_none=True)
    return {"batch": batch, "classes": classes, "infer_img_s": batch / infer_s, "train_img_s": batch / train_s,
            "train_forward_img_s": batch / forward_s,
            "ratio": infer_s / train_s, "flops_forward": forward, "flops_adapted_forward": adapted_forward,
            "flops_train_frozen": frozen_train, "flops_train_with_weight_grads": full_train,
            "flop_ratio_frozen": frozen_train / forward, "flop_ratio_weight_grads": full_train / forward}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256, help="JPEGs extracted in part 2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="112 px, 48 images, batch 8")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.small:
        args.img_size, args.images, args.batch = 112, 48, 8
    results = {
        "compile": compiled_vs_eager(args.model, args.img_size, args.batch),
        "extract": extract_vs_bare(args.model, args.img_size, args.images, args.batch, args.workers),
        "train": train_vs_inference(args.model, args.img_size, args.batch),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
