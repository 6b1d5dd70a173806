"""``torchrun`` ranks fill disjoint shards of one cache; the result equals a single-process build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grappa_cli.data.cache import build_image_cache
from grappa_cli.data.tasks.base import ImageList
from grappa_cli.storage.store import Store

from .conftest import make_cache_images


@pytest.mark.distributed
def test_two_ranks_build_the_same_cache_as_one_process(tmp_path: Path) -> None:
    paths = make_cache_images(tmp_path / "images")
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(paths))
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name("torchrun_build.py")), str(tmp_path / "dist.zarr"), str(listing)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = sorted(int(line.split()[-1]) for line in proc.stdout.splitlines() if "built" in line)
    assert built == [12, 12]  # 6 shards of 4 rows, 3 per rank
    reference = Store(tmp_path / "ref.zarr")
    build_image_cache(reference, "train", paths, size=20, chunk_rows=4,
                      inputs={"images": ImageList(paths).fingerprint()})
    store = Store(tmp_path / "dist.zarr")
    assert store.provenance("cache/train")["complete"]
    for name in ("images", "rows", "paths", "valid", "error"):
        np.testing.assert_array_equal(store.read(f"cache/train/{name}"), reference.read(f"cache/train/{name}"))


@pytest.mark.distributed
def test_two_ranks_grow_the_cache_together(tmp_path: Path) -> None:
    """`grappa run` under torchrun: every rank takes rank 0's decision and they fill the added shards together."""
    from grappa_cli.config import update_file
    from grappa_cli.pipeline.stages import cache as stage
    from grappa_cli.setup.init import create_project

    from .conftest import write_features_train

    paths = make_cache_images(tmp_path / "images")
    project = create_project(tmp_path / "proj")
    update_file(project.config_path, lambda doc: doc["data"].__setitem__("num_workers", 0))
    write_features_train(project.store(), paths[:-5])
    options = stage.CacheOptions(chunk_rows=4, num_workers=0)
    stage.build(project, stage.plan(project, options), options)
    write_features_train(project.store(), paths)
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name("torchrun_grow.py")), str(project.root)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    grew = sorted(line.split()[-1] for line in proc.stdout.splitlines() if "grew" in line)
    assert grew == ["4", "4"]  # the shard of rows 16-19 and the new one of rows 20-23, one per rank
    store = project.store(mode="r")
    assert stage.require_training_cache(store) == "cache/train"
    fresh = create_project(tmp_path / "fresh")
    write_features_train(fresh.store(), paths)
    stage.build(fresh, stage.plan(fresh, options), options)
    by_row = {}
    for name, s in (("grown", store), ("fresh", fresh.store(mode="r"))):
        rows = np.asarray(s.read("cache/train/rows"))
        images = np.asarray(s.read("cache/train/images"))
        by_row[name] = {int(r): images[i].tobytes() for i, r in enumerate(rows)}
    assert by_row["grown"] == by_row["fresh"]
