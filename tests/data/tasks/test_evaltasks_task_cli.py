"""``grappa task add`` and ``grappa task list`` through the real command line."""

from __future__ import annotations

import json
import os

import pytest

from grappa_cli.setup.init import create_project
from tests.conftest import make_image_folder

from . import fake_datasets as fake


@pytest.fixture
def project(tmp_path):
    return create_project(tmp_path / "proj")


def test_add_validates_prints_counts_and_keeps_comments(cli, project, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n_classes=4, per_class=3)
    before = project.config_path.read_text()
    result = cli("task", "add", "shapes", folder, "--type", "imagefolder", "--project", project.root)
    assert result.exit_code == 0, result.stderr
    assert "train 2 classes / 6 images; test 2 classes / 6 images" in result.stdout
    text = project.config_path.read_text()
    assert text.startswith(before.rstrip("\n")), "the existing file (comments included) is kept as is"
    assert '[tasks.shapes]\ntype = "imagefolder"\nroot = "' + str(folder) + '"' in text
    config = project.config()
    assert config.tasks["shapes"].type == "imagefolder" and config.tasks["shapes"].root == str(folder)
    runs = (project.state_dir / "runs.jsonl").read_text()
    assert '"command": "task add"' in runs


def test_add_refuses_to_replace_without_force_and_writes_options(cli, project, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n_classes=2, per_class=2)
    assert cli("-C", project.root, "task", "add", "shapes", folder, "--type", "imagefolder").exit_code == 0
    again = cli("-C", project.root, "task", "add", "shapes", folder, "--type", "imagefolder")
    assert again.exit_code == 1 and "already configured" in again.stderr
    replaced = cli(
        "-C",
        project.root,
        "task",
        "add",
        "shapes",
        folder,
        "--type",
        "imagefolder",
        "--force",
        "--option",
        "split=all-test",
    )
    assert replaced.exit_code == 0, replaced.stderr
    assert "train 0 classes / 0 images; test 2 classes / 4 images" in replaced.stdout
    assert project.config().tasks["shapes"].options == {"split": "all-test"}
    assert project.config_path.read_text().count("[tasks.shapes]") == 1


def test_add_with_dataset_reader_and_name_as_type(cli, project, tmp_path):
    root = fake.make_cub(tmp_path / "data", ["001.A", "002.B", "003.C"], per_class=2)
    result = cli("-C", project.root, "task", "add", "cub", root / "CUB_200_2011")
    assert result.exit_code == 0, result.stderr
    assert "train 2 classes / 4 images; test 1 classes / 2 images" in result.stdout
    assert "type" not in project.config_path.read_text().split("[tasks.cub]")[1]


def test_add_reports_bad_roots_types_and_options(cli, project, tmp_path):
    (tmp_path / "empty").mkdir()
    bad_root = cli("-C", project.root, "task", "add", "flowers", tmp_path / "empty")
    assert bad_root.exit_code == 1
    assert "Error:" in bad_root.stderr and "flowers-102/imagelabels.mat" in bad_root.stderr
    assert "[tasks.flowers]" not in project.config_path.read_text(), "nothing written on failure"
    bad_type = cli("-C", project.root, "task", "add", "x", tmp_path, "--type", "imagefoldr")
    assert bad_type.exit_code == 1 and "did you mean 'imagefolder'" in bad_type.stderr
    bad_option = cli("-C", project.root, "task", "add", "x", tmp_path, "--type", "imagefolder", "-o", "split")
    assert bad_option.exit_code == 2 and "KEY=VALUE" in bad_option.stderr


def test_add_warns_about_singleton_test_classes(cli, project, tmp_path):
    folder = make_image_folder(tmp_path / "imgs", n_classes=2, per_class=2)
    os.remove(folder / "class_001" / "img_001.png")
    result = cli("-C", project.root, "task", "add", "shapes", folder, "--type", "imagefolder")
    assert result.exit_code == 0
    assert "task shapes: 1 test class(es) have a single image (class_001)" in " ".join(result.stderr.split())


def test_list_shows_counts_usage_and_errors(cli, project, tmp_path):
    empty = cli("-C", project.root, "task", "list")
    assert empty.exit_code == 0 and "No tasks configured" in empty.stdout
    folder = make_image_folder(tmp_path / "imgs", n_classes=4, per_class=3)
    other = make_image_folder(tmp_path / "other", n_classes=2, per_class=2)
    assert cli("-C", project.root, "task", "add", "shapes", folder, "--type", "imagefolder").exit_code == 0
    assert cli("-C", project.root, "task", "add", "other", other, "--type", "imagefolder").exit_code == 0
    table = cli("-C", project.root, "task", "list")
    assert table.exit_code == 0, table.stderr
    assert "shapes" in table.stdout and "imagefolder" in table.stdout
    as_json = json.loads(cli("-C", project.root, "task", "list", "--json").stdout)
    assert [t["name"] for t in as_json] == ["shapes", "other"]
    assert as_json[0]["train"] == {"classes": 2, "images": 6} and as_json[0]["test"] == {
        "classes": 2,
        "images": 6,
    }
    assert as_json[0]["evaluated"] and not as_json[0]["in_training_set"]  # data.train is still ["mrt"]
    for path in sorted(other.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    broken = cli("-C", project.root, "task", "list", "--json")
    assert broken.exit_code == 1 and "1 task(s) could not be read: other" in broken.stderr
    entry = json.loads(broken.stdout)[1]
    assert entry["train"] is None and "task other: no images in class folders" in entry["error"]
