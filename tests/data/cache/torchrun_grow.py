"""Entry point for the distributed growth test: ``torchrun --nproc_per_node N torchrun_grow.py PROJECT``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist

from grappa_cli.pipeline.stages.cache import grow_training_cache
from grappa_cli.project import Project
from tests.data.cache.rank_lines import say_line


def main() -> None:
    dist.init_process_group("gloo")
    result = grow_training_cache(Project(Path(sys.argv[1])))
    say_line(f"rank {dist.get_rank()} grew {result.built if result else None}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
