"""Growing the training image cache after an incremental update vs rebuilding it.

An incremental update appends the images of a new domain to the training set. A project that
trains from its image cache (``grappa cache build``) then either grows the cache by the added
images (what ``grappa run`` does) or rebuilds it on the union (``grappa cache build --force``).
Side by side in one run, on real images (Debian's ``tuxpaint-stamps-default`` for the first
training set, ``openclipart-png`` for the added domain):

(a) ``build``   the cache of the first training set (``--old`` images);
(b) ``grow``    after ``--added`` images are appended: only they (and the one shard they share
                with the last old rows) are decoded;
(c) ``rebuild`` the cache of the union from scratch, in another project.

Then every training row of (b) is checked against (c): same pixels, same readable flags.
Only the image list of ``features/train`` is written (no features are extracted): the cache
reads nothing else. Decoding runs in ``--workers`` spawned processes (0: in this process).

    python benchmarks/bench_cache_growth.py                 # 600 + 200 images at 248 px
    python benchmarks/bench_cache_growth.py --old 200 --added 60
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_data

#: the data config ``grappa extract`` records for a 224-pixel model (cache side 224 / 0.9 = 248)
DATA_CONFIG = {"input_size": [3, 224, 224], "crop_pct": 0.9, "interpolation": "bicubic",
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def real_images(old: int, added: int) -> tuple[list[str], list[str]]:
    """``old`` stamp PNGs and ``added`` clip-art PNGs, each in a fixed (sorted, strided) order."""
    stamps = sorted(p for files in quality_data._stamp_files().values() for p in files)
    clipart = sorted(str(p) for p in quality_data.CLIPART_ROOT.rglob("*.png"))
    if len(stamps) < old or len(clipart) < added:
        raise SystemExit(f"Error: need {old} stamps and {added} clip-art images, found {len(stamps)} and "
                         f"{len(clipart)}; apt-get install tuxpaint-stamps-default openclipart-png")
    return stamps[:: max(1, len(stamps) // old)][:old], clipart[:: max(1, len(clipart) // added)][:added]


def write_training_list(store, paths: list[str]) -> None:
    """What ``grappa extract`` records for the training set's image list."""
    from grappa_cli.data.tasks.base import ImageList

    store.begin("features/train", "extract", {"backbone": "bench", "data_config": DATA_CONFIG},
                {"images": ImageList(paths).fingerprint()})
    store.write_array("features/train/paths", np.asarray(paths, dtype=str))
    store.finish("features/train", images=len(paths))


def timed_build(project, workers: int, force: bool = False) -> tuple[float, int, str]:
    from grappa_cli.pipeline.stages import cache as stage

    options = stage.CacheOptions(num_workers=workers, force=force)
    plan = stage.plan(project, options)
    start = time.perf_counter()
    result = stage.build(project, plan, options)
    return time.perf_counter() - start, result.built, plan.state


def by_training_row(store) -> tuple[dict[int, bytes], dict[int, bool]]:
    rows = np.asarray(store.read("cache/train/rows"))
    valid = np.asarray(store.read("cache/train/valid"))
    images = store.array("cache/train/images")
    return ({int(r): np.asarray(images[i]).tobytes() for i, r in enumerate(rows)},
            {int(r): bool(valid[i]) for i, r in enumerate(rows)})


def measure(args: argparse.Namespace) -> dict:
    import torch

    from grappa_cli.setup.init import create_project

    torch.set_num_threads(1)
    old, added = real_images(args.old, args.added)
    with tempfile.TemporaryDirectory() as tmp:
        project = create_project(Path(tmp) / "grown")
        write_training_list(project.store(), old)
        build_s, build_n, _ = timed_build(project, args.workers)
        write_training_list(project.store(), old + added)
        grow_s, grow_n, state = timed_build(project, args.workers)
        assert state == "grow", state
        fresh = create_project(Path(tmp) / "fresh")
        write_training_list(fresh.store(), old + added)
        rebuild_s, rebuild_n, _ = timed_build(fresh, args.workers)
        same = by_training_row(project.store(mode="r")) == by_training_row(fresh.store(mode="r"))
    return {"old": len(old), "added": len(added), "workers": args.workers,
            "build": {"seconds": build_s, "decoded": build_n},
            "grow": {"seconds": grow_s, "decoded": grow_n},
            "rebuild": {"seconds": rebuild_s, "decoded": rebuild_n},
            "grow_vs_rebuild": grow_s / rebuild_s, "identical_rows": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=int, default=600, help="images of the first training set (stamps)")
    parser.add_argument("--added", type=int, default=200, help="images the update appends (clip art)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (0: in this process)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    result = measure(args)
    for step in ("build", "grow", "rebuild"):
        r = result[step]
        print(f"{step:8s} {r['decoded']:5d} images decoded  {r['seconds']:7.1f} s  "
              f"{r['decoded'] / r['seconds']:6.1f} img/s")
    print(f"grow / rebuild: {result['grow_vs_rebuild']:.2f}x; every training row identical to the rebuild: "
          f"{result['identical_rows']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
