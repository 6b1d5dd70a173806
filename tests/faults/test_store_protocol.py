"""The store's write protocol: arrays before the record, partial groups checked on resume."""

from __future__ import annotations

import numpy as np
import pytest

from grappa_cli.storage import faults


def test_a_partial_group_missing_arrays_is_remade_not_resumed(tiny_project, cli) -> None:
    first = cli("-C", tiny_project.root, "extract", "--split", "test")
    assert first.exit_code == 0, first.stderr
    store = tiny_project.store()
    key = "features/test/shapes"
    labels = store.read(f"{key}/labels")
    assert len(set(labels.tolist())) == 2 and len(labels) == 12  # the test half: 2 classes x 6
    # What an interrupted writer of the old order left: the record, no labels/paths/error.
    for name in ("labels", "paths", "error"):
        store.delete(f"{key}/{name}")
    store.update(key, complete=False)
    again = cli("-C", tiny_project.root, "extract", "--split", "test")
    assert again.exit_code == 0, again.stderr
    store = tiny_project.store(mode="r")
    assert np.array_equal(store.read(f"{key}/labels"), labels)
    assert store.provenance(key)["complete"]
    evaluated = cli("-C", tiny_project.root, "eval", "--model", "backbone", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr


def test_every_write_of_a_group_lands_before_its_record(tiny_project, cli) -> None:
    writes: list[str] = []
    with faults.arm(None, record=writes):
        assert cli("-C", tiny_project.root, "extract", "--split", "test").exit_code == 0
    group = "store.zarr/features/test/shapes/"
    own = [i for i, w in enumerate(writes) if w.startswith(group)]
    for at in own:
        root = tiny_project.root
        tiny_project.store().delete("features/test/shapes")
        with faults.arm(at + 1, "enospc") as plan:
            cli("-C", root, "extract", "--split", "test")
        assert plan.fired
        store = tiny_project.store(mode="r")
        record = store.provenance("features/test/shapes")
        if record is not None:  # a record means every array exists with every row
            for name in ("embeddings", "embeddings_done", "valid", "error", "paths", "labels"):
                assert store.exists(f"features/test/shapes/{name}"), (plan.fired, name)
            assert len(store.read("features/test/shapes/paths")) == 12
            assert np.asarray(store.read("features/test/shapes/labels")).tolist() == [0] * 6 + [1] * 6


def test_delete_is_one_rename(tiny_project, cli) -> None:
    assert cli("-C", tiny_project.root, "extract", "--split", "test").exit_code == 0
    store = tiny_project.store()
    with faults.arm(1, "enospc") as plan, pytest.raises(OSError):
        store.delete("features/test/shapes")
    assert plan.fired.endswith("(delete)")
    assert store.provenance("features/test/shapes")["complete"]  # untouched: nothing was moved
    store.delete("features/test/shapes")
    assert not store.exists("features/test/shapes")
    assert not list(tiny_project.root.glob(".store.zarr.trash-*"))


def test_two_processes_creating_one_store_both_open_it(tmp_path) -> None:
    """torchrun ranks open the store at once: zarr's open-or-create lets the slower one find a
    group the faster one just made (``ContainsGroupError``); both must end up with the group."""
    import threading

    from grappa_cli.storage.store import Store

    failures: list[BaseException] = []
    for attempt in range(40):  # the race lands in about one attempt in five
        path = tmp_path / f"{attempt}.zarr"
        start = threading.Barrier(2)

        def open_store(path=path, start=start) -> None:
            start.wait()
            try:
                Store(path).group("features")
            except BaseException as exc:  # collected, reported by the assert below
                failures.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]
