"""Entry point for the distributed cache test: ``torchrun --nproc_per_node N torchrun_build.py STORE LIST``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from grappa_cli.data.cache import build_image_cache
from grappa_cli.data.tasks.base import ImageList
from grappa_cli.storage.store import Store
from tests.data.cache.rank_lines import say_line


def main() -> None:
    store_path, list_file = sys.argv[1], sys.argv[2]
    paths = Path(list_file).read_text().splitlines()
    dist.init_process_group("gloo")
    result = build_image_cache(Store(Path(store_path)), "train", paths, size=20, chunk_rows=4,
                               inputs={"images": ImageList(paths).fingerprint()})
    say_line(f"rank {dist.get_rank()} built {result.built}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
