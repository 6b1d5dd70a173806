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
from grappa_cli.store import Store

from .conftest import make_cache_images


@pytest.mark.distributed
def test_two_ranks_build_the_same_cache_as_one_process(tmp_path: Path) -> None:
    paths = make_cache_images(tmp_path / "images")
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(paths))
    repo = Path(__file__).resolve().parents[2]
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
