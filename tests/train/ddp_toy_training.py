"""Barlow Twins + LARS training of the toy pair objective under torchrun (gloo on the CPU).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_toy_training.py RUN_DIR OUT_DIR

Each rank saves its final trainable state to ``OUT_DIR/rank<R>.safetensors`` and the
results of the collective helpers to ``OUT_DIR/rank<R>.json``; the test compares ranks
with each other and with one process trained on the whole batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from grappa_cli.train import distributed as dist_utils
from grappa_cli.train.loop import TrainConfig, TrainResult, train
from grappa_cli.train.optim.lars import LARS
from grappa_cli.train.optim.schedule import build_scheduler
from tests.train.train_toys import PairDataset, make_pair_objective

EPOCHS, BATCH = 2, 8


def train_pairs(run_dir: Path) -> TrainResult:
    """The run both the torchrun processes and the single-process reference perform."""
    return train(
        make_pair_objective(0),
        PairDataset(n=32),
        TrainConfig(run_dir=run_dir, epochs=EPOCHS, batch_size=BATCH, seed=0, images_per_item=2),
        make_optimizer=lambda params: LARS(params, lr=0.5, weight_decay=1e-3),
        make_scheduler=lambda opt, steps, n: build_scheduler(opt, "cosine", steps_per_epoch=steps, epochs=n,
                                                             warmup_epochs=0.5),
    )


def main() -> None:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    assert dist_utils.init_distributed(), "expected to run under torchrun"
    rank, world = dist_utils.rank(), dist_utils.world_size()
    result = train_pairs(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(out_dir / f"rank{rank}.safetensors"))

    shard = dist_utils.shard_range(10, align=3)
    gathered = dist_utils.all_gather_concat(torch.arange(10)[shard.start : shard.stop])
    summary = {
        "rank": rank,
        "world_size": world,
        "is_main": dist_utils.is_main(),
        "epoch_losses": result.epoch_losses,
        "gathered": gathered.tolist(),
        "mean": dist_utils.all_reduce_mean(torch.tensor([float(rank)])).item(),
        "broadcast": dist_utils.broadcast_object({"from": rank}),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(summary))
    dist_utils.barrier()
    dist_utils.cleanup()


if __name__ == "__main__":
    main()
