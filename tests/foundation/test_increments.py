"""The increments of a growing training set: names, the prefix rule, what stays valid."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from grappa_cli.records import increments


def _record(stops, fingerprints, *, complete=True, params=None, parts=None):
    parts = parts or [[f"p{i}"] for i in range(len(stops))]
    return {"complete": complete, "params": params or {"backbone": "b@1"}, "fingerprint": fingerprints[-1],
            "images": stops[-1],
            "increments": [{"stop": s, "parts": p, "fingerprint": f}
                           for s, p, f in zip(stops, parts, fingerprints, strict=True)]}


def test_set_names_parse_and_sort_first_increment_first() -> None:
    assert increments.parse_set("k256") == (256, "")
    assert increments.parse_set("k16-coral") == (16, "coral")
    for bad in ("256", "k", "kx", "k16-", "k16-a/b", "fused"):
        assert not increments.is_set_name(bad)
        with pytest.raises(ValueError):
            increments.parse_set(bad)
    names = ["k64-coral", "k1024", "k8-coral", "k256", "k4-birds"]
    assert sorted(names, key=increments.set_sort_key) == ["k256", "k1024", "k4-birds", "k8-coral", "k64-coral"]
    assert increments.part_name("/data/my coral/") == "my_coral"
    assert increments.part_name("coral") == "coral"


def test_records_before_increments_are_one_increment() -> None:
    legacy = {"complete": True, "fingerprint": "f0", "images": 12}
    [only] = increments.recorded(legacy)
    assert (only.start, only.stop, only.fingerprint, only.set_name(8)) == (0, 12, "f0", "k8")
    assert increments.recorded({"complete": True, "fingerprint": "f0"}, rows=7)[0].stop == 7
    assert increments.recorded({"complete": False, "fingerprint": "f0"}) == []


def test_accepts_the_current_and_every_finished_increment() -> None:
    record = _record([10, 15, 18], ["f0", "f1", "f2"])
    assert all(increments.accepts(record, fp) for fp in ("f0", "f1", "f2"))
    assert not increments.accepts(record, "other") and not increments.accepts(record, None)
    growing = _record([10, 15], ["f0", "f1"], complete=False) | {"fingerprint": "f2", "growing": {"from": 15}}
    assert increments.accepts(growing, "f0") and increments.accepts(growing, "f1")
    assert not increments.accepts(growing, "f2")  # the increment being added is not finished
    incs = increments.recorded(record)
    assert [(i.start, i.stop) for i in incs] == [(0, 10), (10, 15), (15, 18)]
    assert [i.set_name(4) for i in incs] == ["k4", "k4-p1", "k4-p2"]


def test_growth_keeps_an_unchanged_prefix_only() -> None:
    record = _record([3], ["fp-abc"])
    paths = ["a", "b", "c", "d", "e"]
    prefix = {3: "fp-abc"}
    assert increments.growth(record, paths, record["params"], lambda n: prefix.get(n)) == 3
    assert increments.growth(record, paths, {"backbone": "other"}, lambda n: prefix.get(n)) is None
    assert increments.growth(record, paths, record["params"], lambda n: "changed") is None  # old images edited
    assert increments.growth(record, paths[:3], record["params"], lambda n: prefix.get(n)) is None  # no new rows
    assert increments.growth(None, paths, {}, lambda n: None) is None


def test_layout_adds_one_increment_of_the_new_parts() -> None:
    record = _record([3], ["f0"], parts=[["birds"]])
    incs = increments.layout(record, 5, ["birds", "coral", "/data/reef"], "incremental")
    assert [(i.start, i.stop, i.parts) for i in incs] == [(0, 3, ["birds"]), (3, 5, ["coral", "/data/reef"])]
    assert incs[1].name == "coral" and incs[1].set_name(16) == "k16-coral"
    assert increments.set_params(incs[1]) == {"increment": "coral", "rows": [3, 5]}
    assert increments.set_params(incs[0]) == {}
    [whole] = increments.layout(record, 5, ["birds", "coral"], "full")
    assert (whole.start, whole.stop) == (0, 5)


def test_k_values_per_increment() -> None:
    config = SimpleNamespace(cluster=SimpleNamespace(k=[8, 32], k_added="auto", auto_count=8, auto_count_added=4,
                                                  auto_min_k=2))
    first, added = increments.Increment(0, 0, 100), increments.Increment(1, 100, 400, ["coral"])
    assert increments.ks_for(config, first, 100) == [8, 32]
    # auto for 300 images: powers of two from about 300/512 to 300/2, at most four below 20,000 images
    assert increments.ks_for(config, added, 300) == [2, 8, 32, 128]
    config.cluster.auto_count_added = 2
    assert increments.ks_for(config, added, 300) == [2, 128]
    config.cluster.auto_min_k = 16  # the coarsest rung is raised to 16 (2^4 .. 2^7)
    assert increments.ks_for(config, added, 300) == [16, 128]
    config.cluster.auto_min_k = 2
    config.cluster.k_added = [4, 64, 512]
    assert increments.ks_for(config, added, 300) == [4, 64]  # an explicit k must fit the added images
    assert increments.ks_for(config, added, 3) == []
