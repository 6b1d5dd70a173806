"""Which fused models a project builds: ``[fuse] strategies``, with ``"auto"`` resolved for the device.

On a GPU, ``auto`` builds Grappa-avg and Grappa-N (the paper's Table 2). On a CPU it builds
Grappa-avg alone: training Grappa-N there takes about as long as training every adaptor set
together (its pairs go through all N sets, and its k-NN graph is rebuilt from a pass over the
training set each epoch), and on the validation harness it was not better than Grappa-avg, the
project's default model (the benchmarks page, "Fusion on validation classes"). Grappa-avg's
numbers do not depend on whether Grappa-N is built, so the choice changes the time of a run,
not the default model. ``grappa fuse --strategy neighbor`` (or a list in ``[fuse] strategies``)
builds Grappa-N on any device.

Every reader of the strategies (the plan, ``grappa run``, ``grappa status``, the plugin check)
asks :func:`fusion_strategies`, so the plan, the status and the run agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig

__all__ = ["AUTO_CPU", "AUTO_GPU", "StrategyChoice", "auto_strategies", "fusion_strategies"]

#: what ``auto`` builds on a GPU and on a CPU
AUTO_GPU = ("avg", "neighbor")
AUTO_CPU = ("avg",)


@dataclass(frozen=True)
class StrategyChoice:
    """The fusion strategies a run builds, and why when ``auto`` chose them."""

    strategies: list[str]
    #: a sentence saying what ``auto`` chose for the device; None when the configuration lists them
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The choice as the run's record keeps it."""
        return {"strategies": list(self.strategies), "reason": self.reason}


def fusion_strategies(config: GrappaConfig, device: str | None = None) -> StrategyChoice:
    """``[fuse] strategies`` as a list; ``auto`` resolved for ``device`` (else ``[runtime] device``)."""
    value = config.fuse.strategies
    if value != "auto":
        return StrategyChoice(list(value))
    import torch

    from grappa_cli.runtime import resolve_device

    name = device or config.runtime.device
    # a named device is taken at its word (a GPU project's `grappa status` works on a laptop too);
    # only "auto" asks whether CUDA is there
    try:
        kind = resolve_device(name).type if name == "auto" else torch.device(name).type
    except RuntimeError:
        kind = resolve_device(name).type  # an unknown name: resolve_device says so in one line
    return auto_strategies(kind)


def auto_strategies(device_type: str) -> StrategyChoice:
    """What ``auto`` builds on a device of this type (``"cpu"``, ``"cuda"``, ...), and why."""
    if device_type == "cpu":
        return StrategyChoice(list(AUTO_CPU), (
            "[fuse] strategies = \"auto\" on a CPU builds Grappa-avg (the default model) alone: Grappa-N trains "
            "about as long as all adaptor sets together there and was not better on validation; "
            "`grappa fuse --strategy neighbor` adds it"))
    return StrategyChoice(list(AUTO_GPU),
                          f"[fuse] strategies = \"auto\" on {device_type} builds Grappa-avg and Grappa-N")
