"""The settings of one training run (:class:`TrainConfig`), read by the loop and by each epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    """Settings of one training run.

    * ``run_dir``: where the checkpoint, ``run.json`` and ``metrics.jsonl`` live; rerunning with
      the same directory resumes (``force`` clears it and starts over);
    * ``batch_size``: global, all ranks together (each of W ranks takes ``batch_size / W``);
      incomplete last batches are dropped; ``steps_per_epoch = len(dataset) // batch_size``;
    * ``seed``: with it, data order, augmentations and dropout of every epoch are fixed, so
      CPU runs repeat exactly; ``device``: ``auto``/``cpu``/``cuda``/``cuda:N``; ``amp``: bf16
      autocast on CUDA, ``cpu_amp`` on the CPU; ``grad_clip``: max gradient norm (0 = off);
    * ``num_workers``: DataLoader processes (``spawn``: the dataset and ``collate_fn`` must be
      picklable, and a script's entry point needs the ``if __name__ == "__main__"`` guard);
    * ``log_every``: steps between progress updates and ``step`` records in the metrics log;
      ``images_per_item``: images in one dataset item (2 for pairs), for images/s;
    * ``settings``: the caller's own settings (learning rate, pseudo-label fingerprint, ...),
      recorded with the loop's own in ``run.json``: a run directory made with other settings
      is refused. The device, ``num_workers`` and world size are not part of it.
    """

    run_dir: Path
    epochs: int
    batch_size: int
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_amp: bool = False
    grad_clip: float = 0.0
    num_workers: int = 0
    log_every: int = 50
    images_per_item: int = 1
    description: str = "train"
    force: bool = False
    #: Start over (instead of refusing) when the run directory holds a run with other settings;
    #: ``grappa run`` uses it so that a changed configuration retrains what depends on it.
    restart_on_mismatch: bool = False
    settings: dict[str, object] = field(default_factory=dict)
