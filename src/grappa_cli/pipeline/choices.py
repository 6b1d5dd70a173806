"""What the settings left to grappa chose for this project on this machine, one sentence each.

Several defaults are decided when a run plans its work, not when ``grappa init`` writes
``grappa.toml``: ``[cluster] k = "auto"`` follows the number of training images, the adaptor
sets' batch and epochs follow it too (``min_steps``, :func:`~grappa_cli.train.optim.schedule.fit_to_size`),
and ``[fuse] strategies = "auto"`` follows the device (:mod:`grappa_cli.pipeline.fusion_choice`).
``grappa status`` prints these sentences ("Chosen for this machine") and ``grappa run`` keeps
them in its record, so a user sees what was chosen and why without reading the code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grappa_cli.config import GrappaConfig
    from grappa_cli.pipeline.graph import Plan

__all__ = ["chosen_settings", "cpu_precision_note"]


def chosen_settings(config: GrappaConfig, plan: Plan) -> list[str]:
    """The sentences for ``plan``: the k ladder and the training length of the first training
    set when ``auto``/``min_steps`` set them, and the fused models when ``auto`` chose them."""
    from grappa_cli.train.optim.schedule import fit_to_size

    lines: list[str] = []
    first = plan.increments[0] if plan.increments else None
    if first is not None and first.images > 0:
        n = first.images
        if config.cluster.k == "auto" and first.ks:
            lines.append(f"[cluster] k = \"auto\" for {n:,} training images: {', '.join(map(str, first.ks))} "
                         f"(a geometric ladder from about n/512, at least auto_min_k = {config.cluster.auto_min_k}, "
                         f"to n/2)")
        a = config.adapt
        batch, epochs = fit_to_size(n, a.batch_size, a.epochs, a.min_steps)
        if (batch, epochs) != (a.batch_size, a.epochs):
            steps = epochs * max(1, n // batch)
            why = [f"the batch is at most n/16, configured {a.batch_size}"] if batch != a.batch_size else []
            if epochs != a.epochs:
                why.append(f"min_steps = {a.min_steps} raises the configured {a.epochs} epochs, to at most 3x")
            lines.append(f"[adapt] each set trains {steps} steps: batches of {batch}, {epochs} epochs of {n:,} "
                         f"images ({'; '.join(why)})")
    if plan.fusion.reason:
        lines.append(plan.fusion.reason)
    return lines


def cpu_precision_note(config: GrappaConfig, device: str | None = None) -> str | None:
    """What ``[runtime] cpu_amp = true`` means on this machine, or None when it does not apply.

    None when the setting is off or the run is on a GPU. On a CPU without bf16 instructions
    torch emulates bf16, slower than float32: that is said as a warning, with the fix.
    """
    if not config.runtime.cpu_amp:
        return None
    from grappa_cli.runtime import cpu_has_bf16, resolve_device

    if resolve_device(device or config.runtime.device).type != "cpu":
        return None
    if cpu_has_bf16():
        return ("[runtime] cpu_amp = true: models run under bf16 autocast on this CPU (faster at 224 px; "
                "the numbers differ from float32 ones)")
    return ("Warning: [runtime] cpu_amp = true, but this CPU has no bf16 instructions (AVX512-BF16 or AMX): "
            "torch emulates bf16, slower than float32; set cpu_amp = false in grappa.toml")
