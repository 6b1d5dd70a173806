"""The fusion-strategy plugin interface and the context a strategy trains in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from grappa_cli.console import Reporter
from grappa_cli.runtime import precision_params

if TYPE_CHECKING:  # annotations only: importing them here would load torch with the plugin interface
    from collections.abc import Callable

    import numpy as np
    from torch import nn

    from grappa_cli.config import GrappaConfig
    from grappa_cli.data.cached_training import TrainingCache
    from grappa_cli.model.adaptor import AdaptorSet
    from grappa_cli.model.backbones.backbone import Backbone
    from grappa_cli.model.grappa import GrappaModel
    from grappa_cli.project import Project
    from grappa_cli.storage.store import Store


@dataclass
class FusionOptions:
    epochs: int | None = None
    batch_size: int | None = None
    device: str | None = None
    seed: int | None = None
    num_workers: int | None = None
    neighbors: int | None = None
    force: bool = False
    #: retrain stale fusions instead of refusing them (``grappa run``)
    refresh: bool = False


@dataclass
class WarmStart:
    """The attention layers of a previous fused model that a retrained fusion starts from."""

    layers: list[nn.Module]
    set_names: list[str]
    fingerprint: str


@dataclass
class FusionContext:
    """Everything a strategy may use; built by ``grappa_cli.pipeline.stages.fuse``."""

    project: Project
    config: GrappaConfig
    store: Store
    backbone: Backbone
    set_names: list[str]
    adaptor_sets: list[AdaptorSet]
    train_paths: list[str]
    options: FusionOptions
    params: dict[str, Any]
    run_dir: Path
    reporter: Reporter
    #: finds the training cache, building it first as ``[data] cache`` says (set by the fuse stage,
    #: as this layer knows nothing of the pipeline; without it: the complete, current cache or None)
    find_cache: Callable[[], TrainingCache | None] | None = field(default=None, repr=False)
    #: a previous fused model whose attention layers start this one (an incremental update)
    warm_start: WarmStart | None = field(default=None, init=False, repr=False)
    _cache: TrainingCache | None = field(default=None, init=False, repr=False)
    _cache_checked: bool = field(default=False, init=False, repr=False)

    def _sized(self) -> tuple[int, int]:
        """(batch, epochs) fitted to the training set's size (:func:`~grappa_cli.train.optim.schedule.fit_to_size`)."""
        from grappa_cli.train.optim.schedule import fit_to_size

        epochs, min_steps = int(self.params["epochs"]), int(self.params.get("min_steps", 0))
        if self.warm_start is not None:  # starts from trained attention: a fraction of the training
            fraction = float(self.config.fuse.warm_steps)
            epochs, min_steps = max(1, round(epochs * fraction)), round(min_steps * fraction)
        return fit_to_size(max(len(self.train_paths), 1), int(self.params["batch_size"]), epochs, min_steps)

    @property
    def epochs(self) -> int:
        return self._sized()[1]

    @property
    def batch_size(self) -> int:
        return self._sized()[0]

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def device(self) -> str:
        return self.options.device or self.config.runtime.device

    def num_workers(self) -> int:
        return self.config.data.num_workers if self.options.num_workers is None else self.options.num_workers

    def training_cache(self) -> TrainingCache | None:
        """The image cache of the training set when complete and current (else None, after a hint);
        built first through :attr:`find_cache`.

        Strategies that train on the training images read it instead of the image files.
        """
        if not self._cache_checked:
            from grappa_cli.data.cached_training import find_training_cache

            self._cache = (self.find_cache() if self.find_cache is not None
                           else find_training_cache(self.store, self.reporter))
            self._cache_checked = True
        return self._cache

    @property
    def read_cache(self) -> bool:
        """Whether the strategy trained on the image cache (for provenance records)."""
        return self._cache is not None

    def cached_rows(self) -> np.ndarray:
        """Training rows readable in the features (``features/train/valid``) and in the cache."""
        cache = self.training_cache()
        assert cache is not None  # called by strategies that train on the cache, once they found it
        return cache.usable_rows(self.store.read("features/train/valid"))

    def model(self, fusion: str) -> GrappaModel:
        """M* over the stored adaptor sets with a fresh ``"mean"`` or ``"attention"`` fusion."""
        import torch

        from grappa_cli.model.grappa import GrappaModel

        torch.manual_seed(self.seed)
        model = GrappaModel.with_adaptor_sets(self.backbone, self.adaptor_sets, fusion=fusion,
                                              attention_init=str(self.params.get("attention_init", "uniform")))
        if self.warm_start is not None and fusion == "attention":
            with torch.no_grad():
                for layer, previous in zip(model.fusion_layers(), self.warm_start.layers, strict=True):
                    layer.load_state_dict(previous.state_dict())
                    if self.config.fuse.warm_scale == "reset" and getattr(layer, "logit_scale", None) is not None:
                        # keep Q and K; weigh old and added sets equally at step 0
                        cast(torch.Tensor, layer.logit_scale).zero_()
        return model


@dataclass
class FusionOutcome:
    """A strategy's result: the model to save and how it was obtained."""

    model: GrappaModel
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    #: True when the adaptors themselves were trained (random baselines): the file must then
    #: hold the adaptors, not refer to the stored sets.
    trained_adaptors: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def artifact_params(strategy: FusionStrategy, config: GrappaConfig, options: FusionOptions, sets: list[str],
                    backbone_id: str) -> dict[str, Any]:
    """Every setting a fused model's fingerprint covers.

    The strategy's own settings, which sets it fuses, the backbone, and the strength the model
    is saved with (``[fuse] strength``: applied after training, but part of what the file is).
    ``grappa fuse`` and the planner both build the fingerprint from this, so they agree.
    """
    return {**strategy.params(config, options), "strategy": strategy.name, "sets": list(sets),
            "backbone": backbone_id, "strength": float(config.fuse.strength),
            **precision_params(config.runtime)}


@runtime_checkable
class FusionStrategy(Protocol):
    """A fusion-strategy plugin (hook ``register_fusion_strategies``).

    ``params(config, options)`` returns the settings that determine its result (they enter
    the provenance fingerprint); ``train(context)`` builds and trains the fused model.
    """

    name: str
    description: str
    uses_labels: bool
    trains_adaptors: bool

    def params(self, config: GrappaConfig, options: FusionOptions) -> dict[str, object]: ...

    def train(self, context: FusionContext) -> FusionOutcome: ...
