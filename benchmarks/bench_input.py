"""Training-input throughput: decoding JPEGs every epoch vs reading the image cache.

Side by side in one run, on generated photo-like JPEGs (500 x 375, texture, quality 90):

(a) ``jpeg``   PIL decoding (draft mode, as grappa decodes) + timm's training transform
               (random resized crop 224, flip, normalise; no colour jitter) in a DataLoader;
(b) ``cache``  the image cache (248 x 248 uint8 squares) read by a DataLoader with the
               chunk-aware sampler + ``TensorAugment.standard`` applied to each batch on CPU
               tensors in the main process (on a GPU machine this step runs on the GPU).

Both loaders use the same number of worker processes, kept alive across epochs (worker start-up
is excluded); the first epoch warms up and is not timed. The main process, which augments in
(b), uses ``--threads`` intra-op threads (default 1: (b) then uses no more CPU than (a)).
Also reported: the cache build rate, its size on disk, the parts of (b) alone (cache reading,
augmentation) and the Barlow Twins two-view recipe on the CPU.

    python benchmarks/bench_input.py            # 400 images, 3 timed epochs
    python benchmarks/bench_input.py --small    # 120 images, 2 timed epochs (a quick check)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_photos(root: Path, n: int, seed: int = 0) -> list[str]:
    """JPEGs with smooth colour regions, oriented texture, edges and sensor-like noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    h, w = 375, 500
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        texture = np.zeros((h, w), np.float32)
        for _ in range(4):
            angle, freq = rng.uniform(0, np.pi), rng.uniform(0.02, 0.4)
            phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(4, 18)
            texture += amp * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        edges = 40.0 * (((xx - rng.uniform(0, w)) * rng.normal() + (yy - rng.uniform(0, h)) * rng.normal()) > 0)
        pixels = base + texture[..., None] + edges[..., None] + rng.normal(0, 6, (h, w, 3))
        path = root / f"photo_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def timed_epochs(run_epoch, epochs: int) -> float:
    """Images per second over ``epochs`` timed epochs after one untimed warm-up epoch."""
    run_epoch(0)
    start = time.perf_counter()
    images = sum(run_epoch(e) for e in range(1, epochs + 1))
    return images / (time.perf_counter() - start)


def bench_jpeg(paths: list[str], data_config: dict, args: argparse.Namespace) -> float:
    from timm.data import create_transform

    from grappa_cli.data.images import ImageDataset, collate_samples, decode_min_side

    transform = create_transform(data_config["input_size"], is_training=True, color_jitter=None,
                                 interpolation="bilinear", mean=data_config["mean"], std=data_config["std"])
    dataset = ImageDataset(paths, transform, min_side=decode_min_side(data_config))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, collate_fn=collate_samples,
        multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4,
        generator=torch.Generator().manual_seed(0),
    )

    def epoch(_: int) -> int:
        return sum(len(batch.indices) for batch in loader)

    return timed_epochs(epoch, args.epochs)


def cached_loader(store_path: Path, args: argparse.Namespace):
    from grappa_cli.data.cache_dataset import CachedImageDataset, collate_cached

    dataset = CachedImageDataset(store_path, "cache/train")
    sampler = dataset.batch_sampler(args.batch_size, window=8, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate_cached,
        multiprocessing_context="spawn", persistent_workers=True, prefetch_factor=4,
    )
    return sampler, loader


def bench_cache(store_path: Path, data_config: dict, args: argparse.Namespace, augment: bool) -> float:
    from grappa_cli.data.gpu_augment import TensorAugment

    sampler, loader = cached_loader(store_path, args)
    recipe = TensorAugment.standard(data_config)
    generator = torch.Generator().manual_seed(0)

    def epoch(e: int) -> int:
        sampler.set_epoch(e)
        count = 0
        for batch in loader:
            if augment:
                out = recipe(batch, generator)
                assert out.shape[-1] == data_config["input_size"][-1]
            count += len(batch)
        return count

    return timed_epochs(epoch, args.epochs)


def bench_augment_only(store_path: Path, data_config: dict, args: argparse.Namespace) -> dict[str, float]:
    from grappa_cli.data.cache_dataset import CachedImageDataset, collate_cached
    from grappa_cli.data.gpu_augment import TensorAugment

    dataset = CachedImageDataset(store_path, "cache/train")
    batch = collate_cached(dataset.__getitems__(list(range(min(args.batch_size, len(dataset))))))
    generator = torch.Generator().manual_seed(0)
    rates = {}
    recipes = {
        "standard": [TensorAugment.standard(data_config)],
        "barlow_twins_two_views": [TensorAugment.barlow_twins(data_config, 1),
                                   TensorAugment.barlow_twins(data_config, 2)],
    }
    for name, views in recipes.items():
        for view in views:
            view(batch, generator)  # warm-up
        repeats = 5
        start = time.perf_counter()
        for _ in range(repeats):
            for view in views:
                view(batch, generator)
        rates[name] = repeats * len(batch) / (time.perf_counter() - start)
    return rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the main process, which augments in (b)")
    parser.add_argument("--dir", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--small", action="store_true", help="120 images, 2 timed epochs")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return parser


def measure(args: argparse.Namespace) -> dict:
    """Every number of the module docstring, measured side by side in one run (``--small`` applied)."""
    if args.small:
        args.images, args.epochs = 120, 2
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> dict:
    from grappa_cli.data.cache import build_image_cache, default_size, stored_bytes
    from grappa_cli.storage.store import Store

    data_config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.9,
                   "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # vit_small_patch16_224.dino
    size = default_size(data_config)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.dir or Path(tmp)
        start = time.perf_counter()
        paths = make_photos(work / "photos", args.images)
        generate_s = time.perf_counter() - start
        jpeg_bytes = sum(Path(p).stat().st_size for p in paths)
        store = Store(work / "store.zarr")
        built = build_image_cache(store, "train", paths, size=size, inputs={"images": "bench"},
                                  num_workers=args.workers, force=True)
        cache_bytes = stored_bytes(store, "cache/train")

        jpeg = bench_jpeg(paths, data_config, args)
        cache = bench_cache(store.path, data_config, args, augment=True)
        read_only = bench_cache(store.path, data_config, args, augment=False)
        augment_only = bench_augment_only(store.path, data_config, args)

    results = {
        "images": args.images, "epochs_timed": args.epochs, "workers": args.workers, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "cache_size_px": size,
        "generate_s": round(generate_s, 1), "jpeg_mb": round(jpeg_bytes / 2**20, 1),
        "cache_mb": round(cache_bytes / 2**20, 1),
        "cache_build_img_s": round(built.images_per_second, 1),
        "jpeg_timm_img_s": round(jpeg, 1), "cache_gpu_augment_cpu_img_s": round(cache, 1),
        "ratio_cache_over_jpeg": round(cache / jpeg, 2),
        "cache_read_only_img_s": round(read_only, 1),
        "augment_only_standard_img_s": round(augment_only["standard"], 1),
        "augment_only_barlow_twins_two_views_img_s": round(augment_only["barlow_twins_two_views"], 1),
    }
    return results


def main() -> None:
    args = build_parser().parse_args()
    results = measure(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
