"""Train the toy frozen-backbone objective in a fresh process (for the SIGKILL test).

    python tests/train/run_toy_training.py RUN_DIR OUT.safetensors [--kill-marker PATH]

With ``--kill-marker`` the script writes PATH once epoch 1's checkpoint is on disk and then
trains slowly (each image takes 50 ms to load), so that the test can kill it with SIGKILL in
the middle of epoch 2. Without it, it trains to the end and saves the final trainable state.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from grappa_cli.train.loop import TrainConfig, TrainResult, train
from grappa_cli.train.optim.schedule import build_scheduler
from tests.train.train_toys import StripesDataset, make_conv_objective


def train_toy(run_dir: Path, kill_marker: Path | None = None) -> TrainResult:
    """Three epochs of Adam + warm-up/cosine on a frozen backbone with an adaptor (one thread)."""
    dataset = StripesDataset(per_class=8, noise=0.05)

    def on_epoch_start(epoch: int, module: torch.nn.Module) -> None:
        if kill_marker is not None and epoch >= 1:
            dataset.delay = 0.05

    def on_epoch_end(epoch: int, module: torch.nn.Module, record: dict) -> None:
        if kill_marker is not None and epoch == 0:
            kill_marker.write_text("epoch 1 done\n")

    return train(
        make_conv_objective(0),
        dataset,
        TrainConfig(run_dir=run_dir, epochs=3, batch_size=8, seed=3, settings={"lr": 1e-2}),
        make_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
        make_scheduler=lambda opt, steps, n: build_scheduler(opt, "cosine", steps_per_epoch=steps, epochs=n,
                                                             warmup_epochs=0.5),
        on_epoch_start=on_epoch_start,
        on_epoch_end=on_epoch_end,
    )


def main() -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-marker", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = train_toy(args.run_dir, args.kill_marker)
    save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(args.out))


if __name__ == "__main__":
    main()
