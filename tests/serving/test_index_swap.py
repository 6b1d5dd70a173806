"""A rebuilt gallery index replaces the old one in one step: searches never see a half-built one."""

from __future__ import annotations

import json

from grappa_cli.serving.gallery import read_sidecar
from grappa_cli.storage import faults
from tests.conftest import copy_project


def _search(cli, project, query) -> list[str]:
    result = cli("-C", project.root, "search", query, "--top-k", "3", "--json")
    assert result.exit_code == 0, result.stderr
    return [m["path"] for m in json.loads(result.stdout)["results"][0]["matches"]]


def test_searches_use_the_old_index_until_the_rebuild_is_swapped_in(fused_project, gallery_images, cli,
                                                                      tmp_path) -> None:
    project = copy_project(fused_project, tmp_path / "proj")
    assert cli("-C", project.root, "index", gallery_images, "--model", "backbone").exit_code == 0
    query = sorted(gallery_images.glob("class_001/*.png"))[0]
    before = _search(cli, project, query)
    first = read_sidecar(project, "default")
    assert first["store_key"] == "gallery/default"

    writes: list[str] = []
    with faults.arm(None, record=writes):
        assert cli("-C", copy_project(project, tmp_path / "probe").root, "index", gallery_images,
                   "--model", "backbone", "--force").exit_code == 0
    swapped_before_failing = 0
    stops = range(1, len(writes) + 1, 6)
    for at in stops:  # a rebuild stopped at many points, each on a fresh copy
        stopped = copy_project(project, tmp_path / f"at{at}")
        with faults.arm(at, "enospc") as plan:
            failed = cli("-C", stopped.root, "index", gallery_images, "--model", "backbone", "--force")
        assert plan.fired and failed.exit_code == 1
        sidecar = read_sidecar(stopped, "default")
        # the failed rebuild left the old index or the complete new one, never a half-built one
        assert sidecar == first or (sidecar["store_key"] != first["store_key"]
                                    and stopped.store(mode="r").provenance(sidecar["store_key"])["complete"])
        swapped_before_failing += sidecar != first
        assert _search(cli, stopped, query) == before, plan.fired  # either one answers the same
        resumed = cli("-C", stopped.root, "index", gallery_images, "--model", "backbone", "--force")
        assert resumed.exit_code == 0, resumed.stderr
        assert _search(cli, stopped, query) == before
    assert swapped_before_failing < len(stops)  # most stops came before the swap: the old index answered
    rebuilt = cli("-C", project.root, "index", gallery_images, "--model", "backbone", "--force")
    assert rebuilt.exit_code == 0, rebuilt.stderr
    new = read_sidecar(project, "default")
    assert new["store_key"] != first["store_key"] and new["index_file"] != first["index_file"]
    assert _search(cli, project, query) == before
    # the old generation is gone: its group and its faiss file
    store = project.store(mode="r")
    assert not store.exists(first["store_key"]) and store.exists(new["store_key"])
    assert sorted(p.name for p in project.indexes_dir.iterdir()) == sorted([new["index_file"], "default.json"])
