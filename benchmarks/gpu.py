"""grappa's GPU throughput at the paper's scale, each rate against its floor, and a full-pipeline estimate.

One script, on synthetic data, in a few minutes on one GPU (an H200: well under 8 minutes):

1. the card's bf16 matmul rate (one 8192^3 product, repeated): the compute ceiling;
2. extraction: ViT-S/16 in bf16, batch 512, 224 px, from uint8 images already on the GPU
   through the tensor preprocessing (centre crop of the 248 px cached square, normalisation),
   eager and (``--compile``) ``torch.compile``-d; also M* (N = 8 sets, attention fusion);
3. adaptor training: one set (D' = 64), norm-softmax with k = 16,384, Adam, bf16, batched
   augmentation on the GPU (what ``grappa adapt`` does with the image cache);
4. fusion training: N = 8 sets, attention fusion, Barlow Twins with its projector, LARS, bf16,
   two views made on the GPU (``grappa fuse --strategy transform``/``neighbor``);
5. k-means (25 Lloyd iterations, k-means++ seeding on a subsample) at k = 1,024 and 65,536 on
   133k x 384: faiss on the GPU when importable, else a torch implementation (matmul + argmin);
6. leave-one-out retrieval on 60k embeddings with MAP@R: a float32 search with top-R in
   chunks, and grappa's exact path (``grappa_cli.retrieval.relevance``, what ``retrieval_metrics`` runs);
7. JPEG decoding + evaluation transform on all CPU cores (what bounds ``grappa extract`` and
   evaluation, which read image files, and the one-off ``grappa cache build``).

Each model rate is compared with its floor: FLOPs per image (counted with
``torch.utils.flop_counter``) over the measured matmul rate. The estimate of a full MRT run
(133,339 training images, 8 pseudo-label sets, ~134k test images) uses the measured rates and
states the epochs it assumes.

Runs from the repository root with only torch, timm (and optionally faiss) installed; it
imports the grappa modules that need nothing else (no zarr, pluggy or rich):

    PYTHONPATH=src python benchmarks/gpu.py --out gpu.md --json gpu.json
    PYTHONPATH=src python benchmarks/gpu.py --tiny      # a tiny CPU version (automatic without CUDA)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

#: The paper's setting (section 4): training images, pseudo-granularities, test images (six tasks).
TRAIN_IMAGES = 133_339
PAPER_K = [256, 1024, 4096, 8192, 16384, 32768, 65536, 131072]
TEST_IMAGES = 134_000


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the tiny CPU run."""

    model: str = "vit_small_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    img: int = 224
    cache_px: int = 248
    infer_batch: int = 512
    train_batch: int = 256
    classes: int = 16384
    bottleneck: int = 64
    sets: int = 8
    projector: tuple[int, ...] = (1536, 1536, 1536)
    kmeans_n: int = TRAIN_IMAGES
    kmeans_dim: int = 384
    kmeans_ks: tuple[int, ...] = (1024, 65536)
    kmeans_iters: int = 25
    eval_n: int = 60_000
    eval_classes: int = 60
    matmul_n: int = 8192
    steps: int = 10
    decode_images: int = 64
    dtype: torch.dtype = torch.bfloat16

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2},
                   img=32, cache_px=36, infer_batch=16, train_batch=16, classes=64, bottleneck=16, sets=2,
                   projector=(64, 64), kmeans_n=2000, kmeans_dim=64, kmeans_ks=(16, 64), kmeans_iters=5,
                   eval_n=1000, eval_classes=10, matmul_n=256, steps=2, decode_images=4, dtype=torch.float32)


# -- timing -------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Seconds per call: ``warmup`` untimed calls, then the mean of ``repeats`` (synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def autocast(device: torch.device, dtype: torch.dtype) -> Any:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def counted_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# -- 1. matmul rate -----------------------------------------------------------------------------
def matmul_rate(device: torch.device, n: int, dtype: torch.dtype) -> dict[str, float]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats=10 if device.type == "cuda" else 3)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}


# -- models -------------------------------------------------------------------------------------
def build_models(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    import timm

    from grappa_cli.model.backbones.vit import ViTBackbone
    from grappa_cli.model.grappa import GrappaModel, new_adaptor_set

    torch.manual_seed(0)
    net = timm.create_model(sizes.model, pretrained=False, num_classes=0, **sizes.model_kwargs)
    data_config = {"input_size": (3, sizes.img, sizes.img), "crop_pct": sizes.img / sizes.cache_px,
                   "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    backbone = ViTBackbone(net, sizes.model, data_config).to(device)
    sets = [new_adaptor_set(backbone, sizes.bottleneck, seed=i) for i in range(sizes.sets)]
    with torch.no_grad():  # trained-like adaptors (speed does not depend on the values)
        for adaptor_set in sets:
            for adaptor in adaptor_set.layers:
                adaptor.up.weight.normal_(std=0.02)
    return {
        "backbone": backbone,
        "plain": GrappaModel.backbone_only(backbone).eval(),
        "single": GrappaModel.with_adaptor_sets(backbone, [new_adaptor_set(backbone, sizes.bottleneck, seed=99)],
                                                fusion=None),
        "fused": GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention"),
        "data_config": data_config,
    }


def preprocess(images: torch.Tensor, img: int, mean: Any, std: Any) -> torch.Tensor:
    """Evaluation view of cached uint8 squares: central ``img`` crop, normalised (on their device)."""
    from grappa_cli.data.gpu_augment import normalize

    top = (images.shape[-2] - img) // 2
    left = (images.shape[-1] - img) // 2
    return normalize(images[..., top : top + img, left : left + img], mean, std)


# -- 2. inference -------------------------------------------------------------------------------
def inference_rate(model: Any, sizes: Sizes, device: torch.device, data_config: dict, *, compile: bool = False,
                   repeats: int | None = None) -> dict[str, float]:
    """Images/s of ``model`` on uint8 batches already on the device, preprocessing included."""
    images = torch.randint(0, 256, (sizes.infer_batch, 3, sizes.cache_px, sizes.cache_px), dtype=torch.uint8,
                           device=device)
    net = model.eval()
    compile_s = 0.0
    if compile:
        net = torch.compile(model, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode(), autocast(device, sizes.dtype):
            net(preprocess(images, sizes.img, data_config["mean"], data_config["std"]))
        sync(device)
        compile_s = time.perf_counter() - start

    def step() -> None:
        with torch.inference_mode(), autocast(device, sizes.dtype):
            net(preprocess(images, sizes.img, data_config["mean"], data_config["std"]))

    seconds = timed(step, device, repeats or max(sizes.steps, 3))
    one = preprocess(images[:1], sizes.img, data_config["mean"], data_config["std"])
    with torch.inference_mode(), autocast(device, sizes.dtype):
        flops = counted_flops(lambda: model(one))
    return {"images_per_s": sizes.infer_batch / seconds, "flops_per_image": flops, "compile_s": compile_s}


# -- 3. adaptor training ------------------------------------------------------------------------
def adaptor_training_rate(models: dict, sizes: Sizes, device: torch.device) -> dict[str, float]:
    from grappa_cli.data.gpu_augment import TensorAugment
    from grappa_cli.train.optim.losses import NormSoftmaxLoss

    model = models["single"]
    model.set_trainable(adaptors=True, fusion=False)
    criterion = NormSoftmaxLoss(models["backbone"].embed_dim, sizes.classes, scale=20.0).to(device)
    params = model.trainable_parameters() + list(criterion.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-3)
    augment = TensorAugment.standard(models["data_config"])
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (sizes.train_batch, 3, sizes.cache_px, sizes.cache_px), dtype=torch.uint8,
                           device=device)
    labels = torch.randint(0, sizes.classes, (sizes.train_batch,), device=device)
    model.train()

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device, sizes.dtype):
            return criterion(model(x), y)

    def step() -> None:
        with torch.no_grad():
            x = augment(images, generator)
        loss = loss_of(x, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, device, sizes.steps)
    x2 = augment(images[:2], generator)
    flops = counted_flops(lambda: loss_of(x2, labels[:2]).backward()) / 2
    optimizer.zero_grad(set_to_none=True)
    return {"images_per_s": sizes.train_batch / seconds, "flops_per_image": flops}


# -- 4. fusion training -------------------------------------------------------------------------
def fusion_training_rate(models: dict, sizes: Sizes, device: torch.device) -> dict[str, float]:
    from grappa_cli.data.gpu_augment import TensorAugment
    from grappa_cli.train.optim.lars import LARS, param_groups
    from grappa_cli.train.optim.losses import BarlowTwinsLoss

    model = models["fused"]
    model.set_trainable(adaptors=False, fusion=True)
    criterion = BarlowTwinsLoss(models["backbone"].embed_dim, list(sizes.projector), lambd=0.0051,
                                scale_loss=0.024).to(device)
    params = model.trainable_parameters() + list(criterion.parameters())
    optimizer = LARS(param_groups(params, 1e-3), lr=0.5, weight_decay=1e-3)
    first = TensorAugment.barlow_twins(models["data_config"], 1)
    second = TensorAugment.barlow_twins(models["data_config"], 2)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (sizes.train_batch, 3, sizes.cache_px, sizes.cache_px), dtype=torch.uint8,
                           device=device)
    model.train()
    criterion.train()

    def loss_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with autocast(device, sizes.dtype):
            return criterion(model(a), model(b))

    def step() -> None:
        with torch.no_grad():
            a, b = first(images, generator), second(images, generator)
        loss = loss_of(a, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(step, device, sizes.steps)
    a2, b2 = first(images[:2], generator), second(images[:2], generator)
    flops = counted_flops(lambda: loss_of(a2, b2).backward()) / 4  # per view
    optimizer.zero_grad(set_to_none=True)
    return {"pairs_per_s": sizes.train_batch / seconds, "views_per_s": 2 * sizes.train_batch / seconds,
            "flops_per_view": flops}


# -- 5. k-means ---------------------------------------------------------------------------------
def clustered(n: int, dim: int, centres: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)
    owner = torch.randint(0, centres, (n,), generator=g)
    x = c[owner] + 0.6 * torch.randn(n, dim, generator=g) / math.sqrt(dim)
    return F.normalize(x, dim=1).to(device)


def _nearest(x: torch.Tensor, centres: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centre, in blocks of ``rows`` points."""
    norms = (centres * centres).sum(1)
    labels = torch.empty(len(x), dtype=torch.long, device=x.device)
    dist = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        d = norms[None, :] - 2.0 * (block @ centres.T)
        best, arg = d.min(dim=1)
        labels[start : start + rows] = arg
        dist[start : start + rows] = (best + (block * block).sum(1)).clamp_min_(0)
    return labels, dist


def kmeanspp(sample: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on ``sample``: each centre drawn with probability proportional to D^2 (one
    candidate per step; grappa's faiss backend adds greedy trials on the CPU)."""
    m = len(sample)
    first = int(torch.randint(m, (1,), generator=generator))
    centres = torch.empty(k, sample.shape[1], dtype=sample.dtype, device=sample.device)
    centres[0] = sample[first]
    sq = (sample * sample).sum(1)
    d2 = (sq - 2 * sample @ centres[0] + sq[first]).clamp_min_(0)
    uniforms = torch.rand(k, generator=generator).to(sample.device)  # one copy: the loop never waits
    for i in range(1, k):
        u = uniforms[i : i + 1] * d2.sum()
        j = torch.searchsorted(torch.cumsum(d2, 0), u).clamp_(max=m - 1)
        centres[i] = sample[j]
        d2 = torch.minimum(d2, (sq - 2 * sample @ centres[i] + sq[j]).clamp_min_(0))
    return centres


def torch_kmeans(x: torch.Tensor, k: int, niter: int, seed: int = 0) -> tuple[float, float, float]:
    """(seeding seconds, total seconds, inertia) of Lloyd's k-means with k-means++ on a subsample."""
    device = x.device
    generator = torch.Generator().manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    m = min(len(x), max(4 * k, 1024))  # the seeding subsample
    sample = x[torch.randperm(len(x), generator=generator)[:m].to(device)]
    centres = kmeanspp(sample, k, generator)
    sync(device)
    seeded = time.perf_counter() - start
    rows = max(1, min(len(x), (1 << 28) // k))  # a [rows, k] float32 block of at most 1 GiB
    for _ in range(niter):
        labels, _ = _nearest(x, centres, rows)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    _, dist = _nearest(x, centres, rows)
    inertia = float(dist.sum())
    sync(device)
    return seeded, time.perf_counter() - start, inertia


def faiss_kmeans(x: torch.Tensor, k: int, niter: int, seed: int = 0) -> tuple[float, float] | None:
    """(seconds, inertia) of faiss's k-means on the GPU, or None when faiss has no GPU here."""
    try:
        import faiss
    except ImportError:
        return None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    data = x.float().cpu().numpy()
    start = time.perf_counter()
    km = faiss.Kmeans(data.shape[1], k, niter=niter, seed=seed, gpu=True, verbose=False,
                      max_points_per_centroid=1 << 30)
    km.train(data)
    return time.perf_counter() - start, float(km.obj[-1])


def kmeans_times(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    x = clustered(sizes.kmeans_n, sizes.kmeans_dim, 2000 if sizes.kmeans_n > 10_000 else 50, device)
    rows = []
    for k in sizes.kmeans_ks:
        seeded, total, inertia = torch_kmeans(x, k, sizes.kmeans_iters)
        row: dict[str, Any] = {"k": k, "torch_s": total, "torch_seeding_s": seeded, "torch_inertia": inertia}
        found = faiss_kmeans(x, k, sizes.kmeans_iters)
        if found is not None:
            row.update(faiss_s=found[0], faiss_inertia=found[1])
        rows.append(row)
    return rows


# -- 6. leave-one-out retrieval -----------------------------------------------------------------
def map_at_r(x: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> float:
    """Mean MAP@R, leave-one-out (the query removed by index), exact float32 search in chunks."""
    x = F.normalize(x.float(), dim=1)
    counts = torch.bincount(labels)
    r = counts[labels] - 1
    depth = int(r.max())
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    ranks = torch.arange(1, depth + 1, device=x.device, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        q = x[start : start + chunk]
        sims = q @ x.T
        idx = torch.arange(start, start + len(q), device=x.device)
        sims[torch.arange(len(q), device=x.device), idx] = -math.inf
        top = sims.topk(depth, dim=1).indices
        relevant = (labels[top] == labels[idx, None]).double()
        rq = r[idx].double()
        within = ranks[None, :] <= rq[:, None]
        precision = torch.cumsum(relevant, 1) / ranks[None, :]
        total += ((precision * relevant * within).sum(1) / rq.clamp_min(1))[rq > 0].sum()
    return float(total) / int((r > 0).sum())


class _MapAtR:
    """MAP@R as grappa's relevance-only metric (the built-in plugin needs pluggy, absent here)."""

    relevance_only = True

    def query_depth(self, r: Any) -> Any:
        return r


def exact_map_at_r(x: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    """MAP@R by grappa's exact path (``grappa_cli.retrieval.relevance``: symmetric Gram blocks on ``device``)."""
    import numpy as np

    from grappa_cli.retrieval.metrics import Ranking

    ranking = Ranking(x.cpu().numpy(), labels.cpu().numpy(), device=device.type)
    total, count = 0.0, 0
    for chunk in ranking.relevance_chunks([_MapAtR()], block=4096 if device.type == "cuda" else 512):
        width = chunk.max_r
        ranks = np.arange(1, width + 1)
        hits = chunk.relevant[:, :width] & (ranks[None, :] <= chunk.r[:, None])
        total += float((np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0).sum(axis=1) / chunk.r).sum())
        count += len(chunk)
    return total / count


def eval_time(sizes: Sizes, device: torch.device) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(sizes.eval_n) % sizes.eval_classes
    centres = torch.randn(sizes.eval_classes, 384, generator=g)
    x = (torch.randn(sizes.eval_n, 384, generator=g) + 0.3 * centres[labels]).to(device)
    labels = labels.to(device)
    map_at_r(x[:512], labels[:512])  # warm-up
    sync(device)
    start = time.perf_counter()
    value = map_at_r(x, labels)
    sync(device)
    seconds = time.perf_counter() - start
    exact_map_at_r(x[:512], labels[:512], device)  # warm-up
    sync(device)
    start = time.perf_counter()
    exact = exact_map_at_r(x, labels, device)
    sync(device)
    return {"n": sizes.eval_n, "seconds": seconds, "map_at_r": value, "exact_seconds": time.perf_counter() - start,
            "exact_map_at_r": exact}


# -- 7. JPEG decoding on the CPU ----------------------------------------------------------------
def _decode_all(args: tuple[list[str], dict, int]) -> int:
    from grappa_cli.data.images import load_rgb

    paths, data_config, repeats = args
    from timm.data import create_transform

    transform = create_transform(data_config["input_size"], is_training=False, interpolation="bicubic",
                                 crop_pct=data_config["crop_pct"], mean=data_config["mean"], std=data_config["std"])
    side = int(data_config["input_size"][-1] / data_config["crop_pct"]) + 1
    for _ in range(repeats):
        for path in paths:
            transform(load_rgb(path, side))
    return repeats * len(paths)


def decode_rate(sizes: Sizes, data_config: dict, in_processes: bool = True) -> dict[str, float]:
    """Images/s of JPEG decoding + the eval transform on every CPU core (one process per core),
    or in this process alone (``in_processes=False``, the tiny run: no process start-up)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_input import make_photos

    workers = max(1, os.cpu_count() or 1) if in_processes else 1
    config = {**data_config, "input_size": (3, 224, 224), "crop_pct": 224 / 248}  # photos are full-size
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), sizes.decode_images)
        _decode_all((paths[:1], config, 1))  # imports outside the timing
        if not in_processes:
            start = time.perf_counter()
            done = _decode_all((paths, config, 2))
            seconds = time.perf_counter() - start
            return {"workers": 1, "images_per_s": done / seconds, "per_core": done / seconds}
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_decode_all, [(paths[:1], config, 1)] * workers))  # start every worker
            start = time.perf_counter()
            done = sum(pool.map(_decode_all, [(paths, config, 2)] * workers))
            seconds = time.perf_counter() - start
    return {"workers": workers, "images_per_s": done / seconds, "per_core": done / seconds / workers}


# -- report ----------------------------------------------------------------------------------------
def estimate(results: dict[str, Any], epochs_adapt: int, epochs_fuse: int, eval_models: int) -> dict[str, float]:
    """Seconds of each stage of a full MRT run from the measured rates (see the report's notes)."""
    km = results["kmeans"]
    (k1, t1), (k2, t2) = (km[0]["k"], km[0]["best_s"]), (km[-1]["k"], km[-1]["best_s"])
    slope = (t2 - t1) / max(k2 - k1, 1)
    kmeans_s = sum(max(t1 + slope * (k - k1), t1) for k in PAPER_K)
    decode = results["decode"]["images_per_s"]
    extract_rate = min(results["extract"]["images_per_s"], decode)
    eval_rate = min(results["fused_infer"]["images_per_s"], decode)
    knn_s = results["eval"]["seconds"] * (TRAIN_IMAGES / results["eval"]["n"]) ** 2  # exact search grows as n^2
    metrics_s = results["eval"]["seconds"] * TEST_IMAGES / results["eval"]["n"]  # splits of <= 60k images
    return {
        "cache build (decode the training set once)": TRAIN_IMAGES / decode,
        "extract M (train + test, decode-bound when slower)": (TRAIN_IMAGES + TEST_IMAGES) / extract_rate,
        "k-means, 8 values of k (25 iterations)": kmeans_s,
        f"adapt: 8 sets x {epochs_adapt} epochs (from the cache)":
            8 * epochs_adapt * TRAIN_IMAGES / results["adapt"]["images_per_s"],
        f"fuse (neighbor): {epochs_fuse} epochs, k-NN re-embedding + graph each epoch":
            epochs_fuse * (TRAIN_IMAGES / results["fusion"]["pairs_per_s"]
                           + TRAIN_IMAGES / results["fused_infer"]["images_per_s"] + knn_s),
        f"eval: {eval_models} models x test images (decode-bound when slower) + metrics":
            eval_models * (TEST_IMAGES / eval_rate + metrics_s),
    }


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    env = results["environment"]
    peak = results["matmul"]["tflops"] * 1e12
    lines = [
        f"## GPU throughput ({env['device']}, torch {env['torch']}, {env['date']})",
        "",
        f"Matmul ceiling: {results['matmul']['tflops'] * 1e3:,.1f} GFLOP/s ({results['matmul']['dtype']}, "
        f"{results['matmul']['n']}^3). Floor = FLOPs per image / that rate; efficiency = floor / measured time.",
        "",
        "| measurement | rate | FLOPs / image | floor rate | efficiency |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(name: str, rate: float, flops: float, unit: str = "img/s") -> None:
        floor = peak / flops if flops else math.nan
        lines.append(f"| {name} | {rate:,.0f} {unit} | {flops / 1e9:.2f} G | {floor:,.0f} {unit} | "
                     f"{rate / floor:.0%} |")

    row(f"extract: M, batch {args.sizes.infer_batch}, eager", results["extract"]["images_per_s"],
        results["extract"]["flops_per_image"])
    if "extract_compiled" in results:
        compiled = results["extract_compiled"]
        if "error" in compiled:
            lines.append(f"| extract: M, torch.compile | failed: {compiled['error']} | | | |")
        else:
            row(f"extract: M, torch.compile (compiled in {compiled['compile_s']:.0f} s)", compiled["images_per_s"],
                compiled["flops_per_image"])
    row(f"inference: M* (N = {args.sizes.sets}, attention)", results["fused_infer"]["images_per_s"],
        results["fused_infer"]["flops_per_image"])
    row(f"adapt: one set, norm-softmax k = {args.sizes.classes}, batch {args.sizes.train_batch}",
        results["adapt"]["images_per_s"], results["adapt"]["flops_per_image"])
    row(f"fuse: N = {args.sizes.sets}, Barlow Twins, batch {args.sizes.train_batch} pairs (per view)",
        results["fusion"]["views_per_s"], results["fusion"]["flops_per_view"], "views/s")
    decode = results["decode"]
    lines.append(f"| JPEG decode + eval transform, {decode['workers']} CPU processes | "
                 f"{decode['images_per_s']:,.0f} img/s | | | ({decode['per_core']:,.0f} img/s per core) |")
    sizes = args.sizes
    lines += ["", f"| k-means (n = {sizes.kmeans_n:,}, D = {sizes.kmeans_dim}, {sizes.kmeans_iters} iterations) "
              "| torch s (seeding s) | torch inertia | faiss GPU s | faiss inertia |",
              "|---|---:|---:|---:|---:|"]
    for r in results["kmeans"]:
        faiss_cells = (f"{r['faiss_s']:.1f} | {r['faiss_inertia']:.1f}" if "faiss_s" in r
                       else "not available | -")
        lines.append(f"| k = {r['k']:,} | {r['torch_s']:.1f} ({r['torch_seeding_s']:.1f}) | "
                     f"{r['torch_inertia']:.1f} | {faiss_cells} |")
    ev = results["eval"]
    lines += ["", f"Leave-one-out retrieval, {ev['n']:,} embeddings, float32 search and top-R in chunks: "
              f"{ev['seconds']:.2f} s (MAP@R = {ev['map_at_r']:.4f}); grappa's exact path "
              f"(`retrieval_metrics`: symmetric Gram blocks, candidates, exact near-tie rescoring): "
              f"{ev['exact_seconds']:.2f} s (MAP@R = {ev['exact_map_at_r']:.6f}).", ""]
    est = results["estimate"]
    lines += ["### Estimated full MRT run from these rates", "",
              f"{TRAIN_IMAGES:,} training images, k in {PAPER_K}, ~{TEST_IMAGES:,} test images; "
              f"adapt {args.epochs_adapt} epochs per set and fuse {args.epochs_fuse} epochs (grappa.toml "
              f"defaults), {args.eval_models} models evaluated.", "",
              "| stage | minutes |", "|---|---:|"]
    for name, seconds in est.items():
        lines.append(f"| {name} | {seconds / 60:.1f} |")
    lines.append(f"| **total** | **{sum(est.values()) / 60:.1f}** |")
    lines += ["", "Not included: model loading, store writes, Python start-up. The k-NN graph is timed as an "
              "exact search scaled from the 60k measurement (n^2); evaluation metrics assume test splits of at "
              "most 60k images. FLOPs come from torch's flop counter (the CPU attention kernel is not counted, "
              "so tiny CPU runs undercount)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny CPU version (automatic without CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure torch.compile-d extraction (default: on with CUDA)")
    parser.add_argument("--epochs-adapt", type=int, default=5)
    parser.add_argument("--epochs-fuse", type=int, default=5)
    parser.add_argument("--eval-models", type=int, default=10,
                        help="models evaluated on the test images (e.g. 8 single sets + avg + neighbor)")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    args.sizes = Sizes() if cuda else Sizes.tiny()
    if args.compile is None:
        args.compile = cuda
    if not cuda:
        torch.set_num_threads(1)  # tiny tensors: one thread is faster and steadier on a busy CPU
    started = time.perf_counter()

    results: dict[str, Any] = {"environment": {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores, tiny sizes)",
        "torch": torch.__version__, "python": platform.python_version(), "date": datetime.date.today().isoformat(),
        "tiny": not cuda,
    }}

    def step(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", file=sys.stderr, flush=True)

    step("matmul")
    results["matmul"] = matmul_rate(device, args.sizes.matmul_n, args.sizes.dtype)
    step("models")
    models = build_models(args.sizes, device)
    step("extract")
    results["extract"] = inference_rate(models["plain"], args.sizes, device, models["data_config"])
    if args.compile:
        step("extract, compiled")
        try:
            results["extract_compiled"] = inference_rate(models["plain"], args.sizes, device, models["data_config"],
                                                         compile=True)
        except Exception as exc:  # a missing compiler toolchain must not lose the other numbers
            results["extract_compiled"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    step("fused inference")
    results["fused_infer"] = inference_rate(models["fused"], args.sizes, device, models["data_config"])
    step("adaptor training")
    results["adapt"] = adaptor_training_rate(models, args.sizes, device)
    step("fusion training")
    results["fusion"] = fusion_training_rate(models, args.sizes, device)
    step("k-means")
    results["kmeans"] = kmeans_times(args.sizes, device)
    for r in results["kmeans"]:
        r["best_s"] = min(r["torch_s"], r.get("faiss_s", math.inf))
    step("leave-one-out eval")
    results["eval"] = eval_time(args.sizes, device)
    step("JPEG decoding")
    results["decode"] = decode_rate(args.sizes, models["data_config"], in_processes=cuda)
    results["estimate"] = estimate(results, args.epochs_adapt, args.epochs_fuse, args.eval_models)
    results["environment"]["seconds"] = time.perf_counter() - started
    step("done")

    text = markdown(results, args)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
