"""Trained weights do not depend on the number of DataLoader workers (augmentations are per item)."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.numpy import load_file

from grappa_cli.train.data import SeededSamples
from tests.conftest import copy_project


class _Noise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        import random

        return torch.rand(2), random.random(), float(np.random.rand())


def test_seeded_items_are_a_function_of_seed_and_index_only() -> None:
    items = SeededSamples(_Noise(), seed=5)
    torch.manual_seed(0)
    before = torch.rand(1)
    first = [items[i] for i in range(6)]
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), before)
    backwards = [items[i] for i in reversed(range(6))][::-1]
    for a, b in zip(first, backwards, strict=True):
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not torch.equal(first[0][0], first[1][0])
    assert not torch.equal(SeededSamples(_Noise(), seed=6)[0][0], first[0][0])


def test_seeded_items_seed_only_the_cpu_generator(monkeypatch) -> None:
    """Seeding an item leaves the accelerators' generators alone: ``torch.manual_seed`` would queue
    (or, with a GPU, run) a seeding of every device per item, which cost about 5 % of an adaptor
    set's training time on the CPU and left the GPU's generator at the last item's seed."""
    calls: list[str] = []
    for module in (torch.cuda, torch.xpu, torch.mtia):
        monkeypatch.setattr(module, "manual_seed_all", lambda seed, name=module.__name__: calls.append(name))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append("torch.cuda single"))
    items = SeededSamples(_Noise(), seed=5)
    first = [items[i][0] for i in range(6)]
    assert calls == []
    torch.manual_seed(3)  # the patch is live: the global seeding still reaches it
    assert calls
    again = [items[i][0] for i in range(6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_adaptors_trained_with_0_or_2_workers_are_identical(clustered_project, cli, tmp_path) -> None:
    twin = copy_project(clustered_project, tmp_path / "twin")
    for project, workers in ((clustered_project, "0"), (twin, "2")):
        result = cli("-C", project.root, "adapt", "--k", "2", "--workers", workers)
        assert result.exit_code == 0, result.stderr
    a = load_file(str(clustered_project.adaptors_dir / "k2.safetensors"))
    b = load_file(str(twin.adaptors_dir / "k2.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
