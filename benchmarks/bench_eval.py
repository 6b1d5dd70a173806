"""Embedding test splits for ``grappa eval``: pixel cache vs decoding per model, and vs a bare forward.

Six models (the same architecture, six random initialisations: the forward pass is what
costs) embed three tasks' test splits: two tasks over one folder of JPEGs (as a fine and a
coarse labelling would be) and a third over another folder. Measured in one run:

* **uncached**: what ``grappa eval`` did before: each model decodes and transforms every
  image of every task (:func:`grappa_cli.pipeline.stages.embed.run_embedding`, ``workers`` decoding
  processes);
* **cached**: the pixel cache of :mod:`grappa_cli.pipeline.stages.eval_images`: each image list
  decoded once (timed, included), each model embeds each image once and writes the groups of
  all tasks over it;
* **bare forward**: ``model(x)`` over the same cached images already in memory as tensors,
  the same batch size: the bound for the cached path (target: cached embedding >= 0.85x).

    PYTHONPATH=src python benchmarks/bench_eval.py                      # vit_tiny, 112 px, 2 x 96 images
    PYTHONPATH=src python benchmarks/bench_eval.py --model vit_small_patch16_224 --img-size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Job:
    """What ``grappa eval`` hands the pixel-cache path: an EmbedJob and the state of its group."""

    def __init__(self, embed, state: str = "missing") -> None:
        self.embed, self.embed_state = embed, state


def measure(model: str = "vit_tiny_patch16_224", img_size: int = 112, images: int = 96, models: int = 6,
            batch: int = 32, workers: int = 0, threads: int = 1) -> dict:
    """Seconds and images/s of the three ways (see the module docstring)."""
    from bench_inference import _backbone
    from bench_input import make_photos
    from grappa_cli.data.images import decode_min_side
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.model import GrappaModel
    from grappa_cli.pipeline.stages import eval_images
    from grappa_cli.pipeline.stages.embed import EmbedJob, run_embedding
    from grappa_cli.storage.store import Store

    torch.set_num_threads(threads)
    nets = []
    for seed in range(models):
        torch.manual_seed(seed)
        backbone = _backbone(model, img_size)
        nets.append(GrappaModel.backbone_only(backbone).eval())
    transform = eval_transform(backbone.data_config)
    split = eval_images.split_transform(transform)
    min_side = decode_min_side(backbone.data_config)
    dim = backbone.embed_dim
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder_a = make_photos(Path(tmp) / "a", images, seed=1)
        folder_b = make_photos(Path(tmp) / "b", images, seed=2)
        labels = np.arange(images) % 8
        tasks = {"fine": folder_a, "coarse": folder_a, "other": folder_b}
        per_task = sum(len(p) for p in tasks.values())
        unique = len(set(folder_a)) + len(set(folder_b))

        def jobs(m: int) -> list[EmbedJob]:
            return [EmbedJob(f"eval/m{m}/{task}", "eval", paths, labels, {"model": m}, {"images": task})
                    for task, paths in tasks.items()]

        # uncached: every model decodes every task's images
        store = Store(Path(tmp) / "uncached.zarr")
        start = time.perf_counter()
        for m, net in enumerate(nets):
            for job in jobs(m):
                run_embedding(store, job, net, transform, dim=dim, dtype="float32", chunk_rows=batch * 4,
                              batch_size=batch, num_workers=workers, device=cpu, amp=False, min_side=min_side)
        uncached_s = time.perf_counter() - start
        reference = store.read(f"eval/m{models - 1}/other/embeddings")

        # cached: each image list decoded once, each model embeds each image once
        store = Store(Path(tmp) / "cached.zarr")
        start = time.perf_counter()
        caches = {key: eval_images.ensure_pixel_cache(store, paths, split, size=(img_size, img_size),
                                                      min_side=min_side, num_workers=workers)
                  for key, paths in (("a", folder_a), ("b", folder_b))}
        cache_s = time.perf_counter() - start
        start = time.perf_counter()
        for m, net in enumerate(nets):
            mine = jobs(m)
            eval_images.embed_jobs_from_cache(store, caches["a"], [_Job(j) for j in mine[:2]], net, dim=dim,
                                              dtype="float32", chunk_rows=batch * 4, batch_size=batch,
                                              device=cpu, amp=False)
            eval_images.embed_jobs_from_cache(store, caches["b"], [_Job(mine[2])], net, dim=dim, dtype="float32",
                                              chunk_rows=batch * 4, batch_size=batch, device=cpu, amp=False)
        embed_s = time.perf_counter() - start
        cached = store.read(f"eval/m{models - 1}/other/embeddings")

        # bare forward over the same cached images, already tensors in memory
        tensors = []
        for cache in caches.values():
            pixels = store.read(f"{cache.key}/pixels")
            tensors += [cache.tensor(p) for p in pixels]
        stacked = torch.stack(tensors)
        start = time.perf_counter()
        with torch.inference_mode():
            for net in nets:
                for i in range(0, len(stacked), batch):
                    net(stacked[i : i + batch])
        bare_s = time.perf_counter() - start
    forwards = models * unique
    return {
        "model": model, "img_size": img_size, "models": models, "tasks": len(tasks), "images_per_task": images,
        "unique_images": unique, "batch": batch, "workers": workers, "threads": threads,
        "uncached_s": uncached_s, "cache_build_s": cache_s, "cached_embed_s": embed_s,
        "cached_total_s": cache_s + embed_s, "bare_forward_s": bare_s,
        "uncached_task_img_s": models * per_task / uncached_s,
        "cached_task_img_s": models * per_task / (cache_s + embed_s),
        "cached_embed_img_s": forwards / embed_s, "bare_img_s": forwards / bare_s,
        "speedup_total": uncached_s / (cache_s + embed_s),
        "ratio_cached_over_bare": (forwards / embed_s) / (forwards / bare_s),
        "max_abs_diff_cached_vs_uncached": float(np.abs(cached - reference).max()),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--images", type=int, default=96, help="JPEGs per folder (two folders)")
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0,
                        help="decoding processes (0: decode inline; each worker start costs seconds here)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    r = measure(args.model, args.img_size, args.images, args.models, args.batch_size, args.workers, args.threads)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{r['models']} models x {r['tasks']} tasks ({r['images_per_task']} images each, {r['unique_images']} "
          f"distinct), {r['model']} at {r['img_size']} px, batch {r['batch']}, {r['threads']} thread(s), "
          f"{r['workers']} decoding workers")
    print(f"uncached (decode per model and task): {r['uncached_s']:.1f} s, {r['uncached_task_img_s']:.1f} task-img/s")
    print(f"cached: build {r['cache_build_s']:.1f} s + embed {r['cached_embed_s']:.1f} s = "
          f"{r['cached_total_s']:.1f} s, {r['cached_task_img_s']:.1f} task-img/s ({r['speedup_total']:.2f}x)")
    print(f"embedding from the cache {r['cached_embed_img_s']:.1f} img/s vs bare forward "
          f"{r['bare_img_s']:.1f} img/s: {r['ratio_cached_over_bare']:.2f}x (target >= 0.85)")
    print(f"max |cached - uncached| = {r['max_abs_diff_cached_vs_uncached']:.1e}")


if __name__ == "__main__":
    main()
