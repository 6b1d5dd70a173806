"""Typed views of the ``grappa.toml`` sections (generated from ``grappa_cli.config.SCHEMA``).

Regenerate with ``python -m grappa_cli.cli.config_reference --sections >
src/grappa_cli/config_sections.py``; a test fails when this file differs from the schema.
"""

from __future__ import annotations

from typing import Protocol


class BackboneSection(Protocol):
    """``[backbone]``."""

    values: dict[str, object]  # every key of the section, as loaded
    name: str
    provider: str
    pretrained: bool
    weights: str
    kwargs: dict[str, object]
    input_size: int


class DataSection(Protocol):
    """``[data]``."""

    values: dict[str, object]  # every key of the section, as loaded
    train: list[str]
    batch_size: int
    num_workers: int
    feature_dtype: str
    chunk_size: int
    update: str
    cache: str
    on_duplicates: str
    duplicate_threshold: float


class RuntimeSection(Protocol):
    """``[runtime]``."""

    values: dict[str, object]  # every key of the section, as loaded
    device: str
    seed: int
    amp: bool
    cpu_amp: bool
    compile: bool


class ClusterSection(Protocol):
    """``[cluster]``."""

    values: dict[str, object]  # every key of the section, as loaded
    k: str | list[int]
    auto_count: int
    auto_min_k: int
    k_added: str | list[int]
    auto_count_added: int
    backend: str
    niter: int
    seed: int


class AdaptSection(Protocol):
    """``[adapt]``."""

    values: dict[str, object]  # every key of the section, as loaded
    bottleneck: int
    epochs: int
    batch_size: int
    min_steps: int
    lr: float
    weight_decay: float
    schedule: str
    scale: float
    grad_clip: float
    crop_scale: float
    replay: float
    prototypes: str


class FuseSection(Protocol):
    """``[fuse]``."""

    values: dict[str, object]  # every key of the section, as loaded
    strategies: str | list[str]
    epochs: int
    batch_size: int
    min_steps: int
    optimizer: str
    adam_lr: float
    scale_lr: float
    lr: float
    weight_decay: float
    warmup_epochs: float
    lambd: float
    loss_scale: float
    projector: list[int]
    neighbors: int
    graph: str
    attention_init: str
    balance: float
    strength: float
    warm_start: bool
    warm_steps: float
    warm_scale: str
    pair_augment: bool
    route_criterion: str
    route_temperature: float
    route_images: int


class EvalSection(Protocol):
    """``[eval]``."""

    values: dict[str, object]  # every key of the section, as loaded
    tasks: list[str]
    batch_size: int
    recall_at: list[int]
