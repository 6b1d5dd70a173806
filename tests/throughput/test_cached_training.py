"""Training from the image cache: labels by cache row, views on the batch's device, exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from grappa_cli.data.cache import SquareImage
from grappa_cli.data.cache_dataset import collate_cached
from grappa_cli.data.cached_training import (
    BUILD_HINT,
    CenterView,
    PairViews,
    TwoViews,
    find_training_cache,
)
from grappa_cli.data.gpu_augment import TensorAugment
from grappa_cli.data.images import load_rgb
from grappa_cli.pipeline.stages.adapt import training_inputs
from grappa_cli.train.loop import TrainConfig, train
from tests.data.cache.conftest import DATA_CONFIG
from tests.train.train_toys import make_vit_objective

from .conftest import CACHE_SIZE, UNLABELLED_ROW, class_of


class Interrupted(RuntimeError):
    pass


class Lines:
    """A reporter that keeps what stages log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def _pixels(path: str) -> np.ndarray:
    return SquareImage(CACHE_SIZE)(load_rgb(path, CACHE_SIZE)).numpy()


def test_labels_line_up_with_the_cache_rows(cached_store) -> None:
    store, paths, labels = cached_store
    cache = find_training_cache(store)
    dataset, inputs = training_inputs(store, 3, DATA_CONFIG, cache)
    usable = [r for r in range(len(paths)) if labels[r] >= 0]
    assert sorted(dataset.indices.tolist()) == usable and UNLABELLED_ROW not in usable
    assert not any(paths[r].endswith("broken.jpg") for r in usable)

    sampler = inputs["make_batch_sampler"](dataset, batch_size=5, seed=1, rank=0, world_size=1)
    sampler.set_epoch(0)
    seen: list[int] = []
    for positions in sampler:
        images, rows = inputs["collate_fn"](dataset.__getitems__(positions))
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, CACHE_SIZE, CACHE_SIZE)
        for image, row in zip(images, rows.tolist(), strict=True):
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _pixels(paths[row]))
        views, targets = inputs["prepare_batch"]((images, rows), torch.device("cpu"), torch.Generator().manual_seed(0))
        assert targets.tolist() == [class_of(paths[r]) for r in rows.tolist()]
        assert views.dtype == torch.float32 and views.shape[1:] == (3, 32, 32)
        seen += rows.tolist()
    assert len(seen) == len(set(seen)) == 20  # 22 usable rows, full batches of 5 only
    assert set(seen) <= set(usable)


def _train_cached(store, run_dir: Path, epochs: int, **kwargs):
    cache = find_training_cache(store)
    dataset, inputs = training_inputs(store, 3, DATA_CONFIG, cache)
    config = TrainConfig(run_dir=run_dir, epochs=epochs, batch_size=8, seed=kwargs.pop("seed", 0),
                         settings={"lr": 1e-2})
    return train(make_vit_objective(0, num_classes=3), dataset, config,
                 make_optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), **inputs, **kwargs)


def test_resume_on_the_cached_path_is_exact(cached_store, tmp_path) -> None:
    store, _, _ = cached_store
    reference = _train_cached(store, tmp_path / "ref", 2)

    def stop_after_first(epoch, module, record):
        if epoch == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        _train_cached(store, tmp_path / "run", 2, on_epoch_end=stop_after_first)
    resumed = _train_cached(store, tmp_path / "run", 2)
    assert resumed.start_epoch == 1 and resumed.steps == reference.steps == 4
    assert resumed.epoch_losses == reference.epoch_losses
    assert resumed.state_dict.keys() == reference.state_dict.keys()
    for key, value in reference.state_dict.items():
        assert torch.equal(resumed.state_dict[key], value), key
    other = _train_cached(store, tmp_path / "seed1", 1, seed=1)  # order and views follow the seed
    assert other.epoch_losses[0] != reference.epoch_losses[0]


def test_views_are_made_on_the_batch_device_from_the_generator_only(cached_store) -> None:
    store, _, _ = cached_store
    cache = find_training_cache(store)
    batch = collate_cached(cache.images(np.arange(8)).__getitems__(list(range(8))))
    device = batch.device
    two = TwoViews(TensorAugment.barlow_twins(DATA_CONFIG, 1), TensorAugment.barlow_twins(DATA_CONFIG, 2))
    first, second = two(batch, device, torch.Generator().manual_seed(7))
    again = two(batch, device, torch.Generator().manual_seed(7))
    assert first.device == second.device == batch.device
    assert first.shape == second.shape == (8, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(first, second)
    pairs = PairViews(TensorAugment.standard(DATA_CONFIG))
    a, b = pairs((batch, batch.flip(0)), device, torch.Generator().manual_seed(0))
    assert a.device == b.device == batch.device and a.shape == b.shape == (8, 3, 32, 32)


def test_center_view_is_the_eval_transform_of_the_cached_square(cached_store) -> None:
    from grappa_cli.data.transforms import eval_transform

    store, paths, _ = cached_store
    cache = find_training_cache(store)
    view = CenterView.for_cache(DATA_CONFIG, cache.size)
    assert (view.crop, view.out_size) == (32, 32)
    square = [r for r, p in enumerate(paths) if p.endswith(".jpg") and "broken" not in p][:4]
    batch = collate_cached(cache.images(np.asarray(square)).__getitems__(list(range(4))))
    reference = torch.stack([eval_transform(DATA_CONFIG)(load_rgb(paths[r])) for r in square])
    torch.testing.assert_close(view(batch), reference, atol=1e-5, rtol=0)

    bigger = CenterView.for_cache(DATA_CONFIG, 48)  # a cache built with --size 48: crop 42, resize to 32
    assert bigger.crop == 42
    upscaled = torch.nn.functional.interpolate(batch.float(), size=(48, 48), mode="bicubic", antialias=True)
    out = bigger(upscaled.round().clamp(0, 255).to(torch.uint8))
    assert out.shape == (4, 3, 32, 32)
    assert (out - reference).abs().mean() < 0.1  # same content, resampled twice


def test_find_training_cache_falls_back_with_a_hint(cached_store, tmp_path) -> None:
    from grappa_cli.data import cache as image_cache
    from grappa_cli.storage.store import Store

    from .conftest import write_training_set

    store, paths, _ = cached_store
    lines = Lines()
    found = find_training_cache(store, lines)
    assert found is not None and found.key == "cache/train" and found.size == CACHE_SIZE and not lines.lines

    bare = Store(tmp_path / "bare.zarr")
    write_training_set(bare, paths)
    assert find_training_cache(bare, lines) is None
    assert lines.lines == [BUILD_HINT] and "grappa cache build" in BUILD_HINT
    assert find_training_cache(bare, lines) is None and lines.lines == [BUILD_HINT]  # once per reporter
    other = Lines()
    assert find_training_cache(bare, other) is None and other.lines == [BUILD_HINT]

    lines.lines.clear()
    image_cache.prepare_cache(bare, "train", paths, size=CACHE_SIZE, inputs={"images": "x"})  # begun, never filled
    assert find_training_cache(bare, lines) is None
    assert len(lines.lines) == 1 and "Not reading the image cache" in lines.lines[0]
    assert "grappa cache build" in lines.lines[0]
