"""The run directory of one training run: settings record, checkpoint and metrics log.

    run_dir/
      run.json          settings of the run and their fingerprint (written when it starts)
      checkpoint.pt     state after the last complete epoch (tensors, numbers, strings only)
      metrics.jsonl     one JSON record per logged step and per epoch
      events.out.tfevents.*
                        the same records as TensorBoard scalars, one file per process that
                        trained (with tensorboard installed; grappa_cli.train.tensorboard_log)

The checkpoint is a ``torch.save`` of a dict of tensors and plain values, read back with
``torch.load(weights_only=True)``, so loading never runs pickled code. It is written to a
temporary file and renamed over the old one: a kill at any moment leaves the previous
complete checkpoint in place.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch

from grappa_cli.errors import TrainingError
from grappa_cli.records.provenance import describe_mismatch, fingerprint
from grappa_cli.storage.fsutil import atomic_write_bytes, atomic_write_text
from grappa_cli.train import tensorboard_log

if TYPE_CHECKING:  # annotations only
    from grappa_cli.train.rng import RngState

__all__ = ["CheckpointState", "RunDir"]

#: Bumped when the checkpoint layout changes; older checkpoints are refused.
CHECKPOINT_FORMAT = 1


class CheckpointState(TypedDict):
    """What the training loop checkpoints after every epoch (``torch.save``, plain tensors and numbers)."""

    fingerprint: str
    epoch: int
    global_step: int
    epoch_losses: list[float]
    seconds: float
    images: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, object]
    scheduler: dict[str, object]
    rng: RngState


class RunDir:
    """Paths and file operations of a run directory (only rank 0 calls the writing methods)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.settings_path = self.path / "run.json"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.metrics_path = self.path / "metrics.jsonl"

    # -- settings ---------------------------------------------------------------------------
    def settings_match(self, settings: Mapping[str, object]) -> bool:
        """True when the directory is empty or was made with exactly ``settings``."""
        if not self.settings_path.exists():
            return True
        try:
            return json.loads(self.settings_path.read_text()).get("fingerprint") == fingerprint(settings)
        except (OSError, json.JSONDecodeError):
            return False

    def check_settings(self, settings: Mapping[str, object]) -> None:
        """Refuse a run directory whose recorded settings differ from ``settings``."""
        if not self.settings_path.exists():
            return
        try:
            old = json.loads(self.settings_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"cannot read {self.settings_path} ({exc})",
                                hint=f"pass --force to start over, or delete {self.path}") from None
        if old.get("fingerprint") != fingerprint(settings):
            what = describe_mismatch(old, settings, {})
            raise TrainingError(
                f"{self.path} holds a training run made with other settings ({what})",
                hint=f"pass --force to start over, or delete {self.path}",
            )

    def write_settings(self, settings: Mapping[str, object]) -> None:
        record = {"fingerprint": fingerprint(settings), "params": settings, "inputs": {}}
        atomic_write_text(self.settings_path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")

    def clear(self) -> None:
        """Remove the files of a previous run (``--force``), leaving unrelated files alone.

        Its TensorBoard event files go too: the new run starts again at step 0, and its curves
        must not be drawn over the old ones."""
        for path in (self.settings_path, self.checkpoint_path, self.metrics_path):
            path.unlink(missing_ok=True)
        for tmp in self.path.glob(".checkpoint.pt.*.tmp"):
            tmp.unlink(missing_ok=True)
        for events in self.path.glob("events.out.tfevents.*"):
            events.unlink(missing_ok=True)

    # -- checkpoint -------------------------------------------------------------------------
    def save_checkpoint(self, state: CheckpointState) -> None:
        """Write ``state`` atomically (temporary file, fsync, rename)."""
        buffer = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self) -> CheckpointState | None:
        """The last complete checkpoint on the CPU, or None when there is none."""
        if not self.checkpoint_path.exists():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainingError(f"cannot read checkpoint {self.checkpoint_path} ({exc})",
                                hint=f"pass --force to start over, or delete {self.path}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{self.checkpoint_path} was written by another version of grappa",
                                hint=f"pass --force to start over, or delete {self.path}")
        return cast("CheckpointState", state)  # written by save_checkpoint, format checked

    # -- metrics ----------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one record to ``metrics.jsonl``, and to the run's TensorBoard curves when open."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        tensorboard_log.mirror(self.path, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete record of the metrics log (a torn last line is ignored)."""
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def truncate_metrics(self, epochs_done: int) -> None:
        """Keep only the records of the first ``epochs_done`` epochs (before resuming)."""
        kept = [r for r in self.read_metrics() if int(r.get("epoch", 0)) < epochs_done]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write_text(self.metrics_path, text)
