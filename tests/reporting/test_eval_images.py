"""`grappa eval` decodes each test image once: a pixel cache shared by models and tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _add_task_over_the_same_images(project, name: str) -> None:
    """A second task on the folder of ``shapes`` (the same test images, another name)."""
    import tomlkit

    doc = tomlkit.parse(project.config_path.read_text())
    table = tomlkit.table()
    table["type"] = "imagefolder"
    table["root"] = str(doc["tasks"]["shapes"]["root"])
    doc["tasks"][name] = table
    project.config_path.write_text(tomlkit.dumps(doc))


@pytest.fixture
def counters(monkeypatch):
    """Counts image decodes (``load_rgb``) and images through the tensor part of the transform."""
    from grappa_cli.data import images
    from grappa_cli.pipeline.stages import eval_images

    counts = {"decoded": [], "tensors": 0}
    decode = images.load_rgb

    def counting_decode(path, min_side=None):
        counts["decoded"].append(path)
        return decode(path, min_side)

    monkeypatch.setattr(images, "load_rgb", counting_decode)
    split = eval_images.split_transform

    def counting_split(transform):
        parts = split(transform)
        if parts is None:
            return None

        def tensor(pixels):
            counts["tensors"] += 1
            return parts.tensor(pixels)

        def batch(pixels):
            counts["tensors"] += len(pixels)
            return parts.batch(pixels)

        return eval_images.SplitTransform(parts.pixels, tensor, parts.description,
                                          batch if parts.batch is not None else None)

    monkeypatch.setattr(eval_images, "split_transform", counting_split)
    return counts


def test_eval_of_many_models_and_tasks_decodes_each_test_image_once(fused_project, cli, counters) -> None:
    project = fused_project
    _add_task_over_the_same_images(project, "shapes_again")
    result = cli("-C", project.root, "eval", "--json")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)["results"]
    assert {(e["model"], e["task"]) for e in entries} == {
        (m, t) for m in ("backbone", "adaptor:k2", "adaptor:k4", "fused:avg") for t in ("shapes", "shapes_again")}
    store = project.store(mode="r")
    paths = [str(p) for p in store.read("eval/adaptor-k2/shapes/paths")]
    assert len(paths) >= 8
    # 4 models x 2 tasks over the same images: every test image decoded exactly once
    assert sorted(counters["decoded"]) == sorted(paths)
    # each model embeds each image once, whatever the number of tasks over it: the backbone
    # only for the new task (extract made features/test/shapes), the three others for both
    assert counters["tensors"] == 4 * len(paths)
    for model in ("adaptor-k2", "adaptor-k4", "fused-avg"):
        np.testing.assert_array_equal(store.read(f"eval/{model}/shapes/embeddings"),
                                      store.read(f"eval/{model}/shapes_again/embeddings"))
    by = {(e["model"], e["task"]): e["metrics"] for e in entries}
    for model in ("adaptor:k2", "adaptor:k4", "fused:avg"):
        assert by[(model, "shapes")] == by[(model, "shapes_again")]
    # the backbone's own embedding of the new task equals what extract stored for shapes
    np.testing.assert_allclose(store.read("eval/backbone/shapes_again/embeddings").astype(np.float32),
                               store.read("features/test/shapes/embeddings").astype(np.float32), atol=2e-3)
    cached = [k for k in store.children("cache") if k.startswith("test-")]
    assert len(cached) == 1  # one pixel cache for the two tasks' shared images

    # a later run (forced) reads the stored pixels: nothing is decoded again
    counters["decoded"].clear()
    result = cli("-C", project.root, "eval", "--force", "--model", "adaptor:k2")
    assert result.exit_code == 0, result.stderr
    assert counters["decoded"] == []


def test_cached_pixels_give_the_embeddings_of_decoding(fused_project, cli, monkeypatch) -> None:
    from grappa_cli.pipeline.stages import eval_images

    project = fused_project
    assert cli("-C", project.root, "eval", "--model", "fused:avg").exit_code == 0
    cached = project.store(mode="r").read("eval/fused-avg/shapes/embeddings")
    monkeypatch.setattr(eval_images, "split_transform", lambda transform: None)  # decode per model
    assert cli("-C", project.root, "eval", "--model", "fused:avg", "--force").exit_code == 0
    decoded = project.store(mode="r").read("eval/fused-avg/shapes/embeddings")
    np.testing.assert_allclose(cached.astype(np.float32), decoded.astype(np.float32), atol=2e-3)
    assert np.abs(cached.astype(np.float32)).max() > 0.05  # real features, not zeros


def test_an_unreadable_test_image_is_reported_and_others_are_cached(fused_project, cli) -> None:
    project = fused_project
    store = project.store(mode="r")
    paths = [str(p) for p in store.read("features/test/shapes/paths")]
    del store
    with open(paths[3], "wb") as handle:
        handle.write(b"not an image")
    result = cli("-C", project.root, "eval", "--model", "adaptor:k2", "--json")
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["results"][0]
    assert entry["unreadable"] == 1 and entry["images"] == len(paths) - 1
    store = project.store(mode="r")
    valid = store.read("eval/adaptor-k2/shapes/valid")
    assert not valid[3] and valid.sum() == len(paths) - 1
    assert "cannot identify image file" in str(store.read("eval/adaptor-k2/shapes/error")[3])


def test_split_transform_cuts_before_to_tensor_and_reproduces_the_transform() -> None:
    from PIL import Image

    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.pipeline.stages.eval_images import _PixelsOf, split_transform

    config = {"input_size": (3, 32, 32), "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.3, 0.25),
              "crop_pct": 0.875, "interpolation": "bicubic"}
    transform = eval_transform(config)
    parts = split_transform(transform)
    assert parts is not None and "CenterCrop" in parts.description
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8))
    pixels = _PixelsOf(parts.pixels)(image)
    assert pixels.shape == (32, 32, 3) and str(pixels.dtype) == "torch.uint8"
    assert (parts.tensor(pixels.numpy()) == transform(image)).all()  # bit for bit
    other = Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 50, 3), dtype=np.uint8))
    stacked = np.stack([pixels.numpy(), _PixelsOf(parts.pixels)(other).numpy()])
    assert parts.batch is not None
    batched = parts.batch(stacked)
    assert (batched[0] == transform(image)).all() and (batched[1] == transform(other)).all()
    assert split_transform(lambda img: img) is None


def test_an_interrupted_pixel_cache_redecodes_only_its_unfinished_shards(tmp_path, monkeypatch) -> None:
    from grappa_cli.data import images
    from grappa_cli.data.transforms import eval_transform
    from grappa_cli.pipeline.stages import eval_images
    from grappa_cli.storage.store import Store
    from tests.conftest import make_image_folder

    paths = sorted(str(p) for p in make_image_folder(tmp_path / "img", n_classes=2, per_class=5).rglob("*.png"))
    split = eval_images.split_transform(eval_transform(
        {"input_size": (3, 24, 24), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.9,
         "interpolation": "bicubic"}))
    store = Store(tmp_path / "store.zarr")
    decoded: list[str] = []
    decode = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda path, min_side=None: decoded.append(path) or decode(path))

    def build():
        return eval_images.ensure_pixel_cache(store, paths[::-1], split, size=(24, 24), min_side=None, chunk_rows=4)

    cache = build()
    assert sorted(decoded) == paths and cache.decoded == len(paths)
    assert cache.rows == {p: i for i, p in enumerate(paths)}  # each path once, sorted
    full = store.read(f"{cache.key}/pixels")
    # an interruption: shard 1 (rows 4-7) never marked done, its pixels lost
    store.array(f"{cache.key}/pixels_done")[1] = False
    store.array(f"{cache.key}/pixels")[4:8] = 0
    record = store.provenance(cache.key)
    store.update(cache.key, complete=False)
    decoded.clear()
    again = build()
    assert sorted(decoded) == paths[4:8] and again.key == cache.key
    np.testing.assert_array_equal(store.read(f"{cache.key}/pixels"), full)
    assert store.provenance(cache.key)["complete"] and record["fingerprint"] == store.provenance(cache.key)[
        "fingerprint"]
    decoded.clear()
    build()  # complete: nothing to decode
    assert decoded == []
