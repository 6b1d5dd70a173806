"""Odd folders and odd images: symlink loops, edits that keep the size, 16-bit PNGs, huge images."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grappa_cli.data.images import UnsafeImage, load_rgb
from grappa_cli.data.tasks.base import ImageList
from grappa_cli.data.tasks.imagefolder import ImageFolderTask, list_images
from grappa_cli.errors import GrappaWarning
from tests.conftest import make_image_folder


def test_a_symlink_loop_is_walked_once_and_reported(tmp_path) -> None:
    root = make_image_folder(tmp_path / "images", n_classes=2, per_class=3)
    (root / "class_000" / "back").symlink_to(root, target_is_directory=True)  # loop to the root
    (root / "class_001" / "self").symlink_to(root / "class_001", target_is_directory=True)
    with pytest.warns(GrappaWarning, match="symlink loop"):
        found = list_images(root)
    assert len(found) == 6 and len(set(found)) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrappaWarning)
        splits = ImageFolderTask().read(root, split="classes")
    assert len(splits.train) + len(splits.test) == 6


def test_two_links_to_one_folder_list_its_images_once(tmp_path) -> None:
    root = make_image_folder(tmp_path / "images", n_classes=1, per_class=2)
    (root / "class_000" / "a").mkdir()
    Image.new("RGB", (8, 8)).save(root / "class_000" / "a" / "x.png")
    (root / "class_000" / "b").symlink_to(root / "class_000" / "a", target_is_directory=True)
    with pytest.warns(GrappaWarning):
        found = list_images(root)
    assert sorted(Path(p).name for p in found) == ["img_000.png", "img_001.png", "x.png"]


def test_symlink_loop_in_a_task_is_one_warning_on_the_cli(tiny_project, cli) -> None:
    images = Path(tiny_project.config().tasks["shapes"].root)
    (images / "class_000" / "loop").symlink_to(images, target_is_directory=True)
    listed = cli("-C", tiny_project.root, "task", "list")
    assert listed.exit_code == 0, listed.stderr
    warning_lines = [line for line in listed.stderr.splitlines() if line.startswith("Warning:")]
    assert warning_lines and "symlink loop" in warning_lines[0]


def test_an_edit_that_keeps_the_size_changes_the_fingerprint(tmp_path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    images = ImageList([str(path)])
    before, before_content = images.fingerprint(), images.content_fingerprint()
    size = path.stat().st_size
    time.sleep(0.01)
    Image.new("RGB", (8, 8), (10, 20, 31)).save(path)
    assert path.stat().st_size == size
    assert images.fingerprint() != before
    assert images.content_fingerprint() != before_content
    # an edit that also restores the time is seen only by the content hash
    stat = path.stat()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images.content_fingerprint() == before_content


def _save_uncompressed(path: Path, pixels: np.ndarray) -> None:
    """A PNG stored without compression: its size depends on the image's shape only."""
    Image.fromarray(pixels).save(path, format="PNG", compress_level=0)


def _edit_keeping_size_and_time(path: Path) -> None:
    """Invert the pixels of an uncompressed PNG: same size, and the modification time put back."""
    stat = path.stat()
    with Image.open(path) as img:
        pixels = np.asarray(img).copy()
    _save_uncompressed(path, 255 - pixels)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_extract_sees_edits_and_verify_sees_hidden_ones(tiny_project, cli) -> None:
    assert cli("-C", tiny_project.root, "extract", "--split", "test").exit_code == 0
    store = tiny_project.store(mode="r")
    first = store.read("features/test/shapes/embeddings")
    paths = [str(p) for p in store.read("features/test/shapes/paths")]
    # an edit with a new mtime: the split is stale (refused by hand, redone by `run`)
    time.sleep(0.01)
    Path(paths[0]).touch()
    stale = cli("-C", tiny_project.root, "extract", "--split", "test")
    assert stale.exit_code == 1 and "made from other inputs" in stale.stderr
    assert cli("-C", tiny_project.root, "extract", "--split", "test", "--force").exit_code == 0
    # store the first image uncompressed (an ordinary edit), so that the edit below keeps its size exactly
    with Image.open(paths[0]) as img:
        _save_uncompressed(Path(paths[0]), np.asarray(img).copy())
    # record the content, then an edit that keeps size and mtime: only --verify sees it
    assert cli("-C", tiny_project.root, "extract", "--split", "test", "--force", "--verify").exit_code == 0
    first = tiny_project.store(mode="r").read("features/test/shapes/embeddings")
    fingerprint = tiny_project.store(mode="r").provenance("features/test/shapes")["fingerprint"]
    _edit_keeping_size_and_time(Path(paths[0]))
    quiet = cli("-C", tiny_project.root, "extract", "--split", "test", "--json")
    assert quiet.exit_code == 0 and '"skipped": true' in quiet.stdout
    verified = cli("-C", tiny_project.root, "extract", "--split", "test", "--verify", "--json")
    assert verified.exit_code == 0 and '"skipped": false' in verified.stdout, verified.stdout
    record = tiny_project.store(mode="r").provenance("features/test/shapes")
    assert record["complete"] and record["fingerprint"] != fingerprint  # what was made from it is stale now
    again = tiny_project.store(mode="r").read("features/test/shapes/embeddings")
    assert not np.array_equal(again[0], first[0]) and np.array_equal(again[1:], first[1:])
    still = cli("-C", tiny_project.root, "extract", "--split", "test", "--json")
    assert '"skipped": true' in still.stdout  # the hash is carried over while files stay put


def test_16_bit_png_keeps_its_grey_levels(tmp_path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    rgb = np.asarray(load_rgb(str(tmp_path / "g16.png")))
    assert rgb.shape == (64, 64, 3)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert 120 < rgb.mean() < 135  # a ramp, not white (PIL's own conversion gives about 254)


def test_a_decompression_bomb_is_refused_with_the_reason(tmp_path, monkeypatch) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 10,000 px: above the limit, below twice it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape
        with pytest.raises(UnsafeImage, match="decompression bomb"):
            load_rgb(str(tmp_path / "big.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # beyond twice the limit: PIL's own error
    with pytest.raises(UnsafeImage, match="decompression bomb"):
        load_rgb(str(tmp_path / "big.png"))
