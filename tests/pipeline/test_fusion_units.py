"""Grappa-N's k-NN pairs and what fusion training may change, tested directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grappa_cli.errors import TrainingError
from grappa_cli.fusion.neighbors import knn_graph, sample_pairs
from grappa_cli.model.backbones.backbone import BackboneSpec, build_backbone
from grappa_cli.model.grappa import GrappaModel, new_adaptor_set
from grappa_cli.train.optim.losses import BarlowTwinsLoss
from tests.conftest import TINY_VIT_KWARGS, TINY_VIT_NAME


def test_knn_graph_never_pairs_an_image_with_itself_even_with_duplicates() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(10, 8)).astype(np.float32)
    x = np.concatenate([base, base[:4], base[:4]])  # rows 10..17 duplicate rows 0..3 exactly
    graph = knn_graph(x, 3)
    assert graph.shape == (18, 3)
    assert not (graph == np.arange(18)[:, None]).any()
    # an image's exact duplicates are its nearest neighbours (score 1), never itself
    assert set(graph[0, :2].tolist()) == {10, 14}
    assert set(graph[10, :2].tolist()) == {0, 14}
    for row in graph:
        assert len(set(row.tolist())) == 3


def test_knn_graph_matches_brute_force_and_pairs_come_from_it() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    graph = knn_graph(x, 4)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    assert (np.sort(graph, 1) == np.sort(expected, 1)).all()
    pairs = sample_pairs(graph, np.random.default_rng(0))
    assert (pairs[:, 0] == np.arange(40)).all()
    assert all(j in graph[i] for i, j in pairs)
    with pytest.raises(TrainingError, match="neighbours need more than"):
        knn_graph(x[:4], 4)


def _tiny_model(fusion: str = "attention", n: int = 3, up_std: float = 0.05, init: str = "linear") -> GrappaModel:
    backbone = build_backbone(BackboneSpec(name=TINY_VIT_NAME, pretrained=False, kwargs=dict(TINY_VIT_KWARGS)))
    sets = []
    for i in range(n):
        s = new_adaptor_set(backbone, 16, seed=i)
        with torch.no_grad():
            for adaptor in s.layers:  # trained-looking (non-zero) up projections
                adaptor.up.weight.normal_(0, up_std, generator=torch.Generator().manual_seed(i))
        sets.append(s)
    return GrappaModel.with_adaptor_sets(backbone, sets, fusion=fusion, attention_init=init)


def test_fusion_training_gives_gradients_to_q_and_k_only() -> None:
    model = _tiny_model()
    trainable = model.set_trainable(adaptors=False, fusion=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.endswith(("query.weight", "key.weight")) for n in names)
    assert len(trainable) == 2 * model.backbone.num_layers
    loss_fn = BarlowTwinsLoss(model.backbone.embed_dim, [32, 32])
    images = torch.randn(6, 3, 32, 32)
    loss = loss_fn(model(images), model(images + 0.1 * torch.randn_like(images)))
    loss.backward()
    for name, param in model.named_parameters():
        if name in names:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_random_baselines_train_adaptors_and_fusion() -> None:
    model = _tiny_model()
    model.set_trainable(adaptors=True, fusion=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("bank" in n for n in names) and any("query" in n for n in names)
    assert not any(n.startswith("backbone.") for n in names)


def test_graph_changes_when_the_model_changes() -> None:
    """The graph is rebuilt from the current model: moving Q/K moves the embeddings and the graph."""
    from grappa_cli.fusion.neighbors import embed_paths

    model = _tiny_model(up_std=0.5)
    rng = np.random.default_rng(0)
    import tempfile
    from pathlib import Path

    from PIL import Image

    folder = Path(tempfile.mkdtemp())
    paths = []
    for i in range(30):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    from grappa_cli.data.transforms import eval_transform

    transform = eval_transform(model.backbone.data_config)
    kwargs = {"batch_size": 8, "num_workers": 0, "device": torch.device("cpu")}
    before = knn_graph(embed_paths(model, paths, transform, **kwargs), 3)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for layer in model.layers:  # another attention: a different M*, as fusion training makes
            layer.fusion.query.weight.normal_(0, 1.0, generator=generator)
    after = knn_graph(embed_paths(model, paths, transform, **kwargs), 3)
    assert (before != after).any()


def test_attention_balance_is_the_kl_from_uniform_to_the_batch_mean() -> None:
    from grappa_cli.fusion.balance import attention_balance

    uniform = torch.full((4, 2, 3), 1 / 3)
    assert attention_balance(uniform).item() == pytest.approx(0.0, abs=1e-7)
    # each image picks one set, the batch shares them evenly: balanced, whatever the entropy per image
    one_hot = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert attention_balance(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    # batch mean (0.75, 0.25): -log 2 - (log 0.75 + log 0.25) / 2 = 0.143841
    skewed = torch.tensor([[[0.75, 0.25]], [[0.5, 0.5]], [[1.0, 0.0]]])
    assert attention_balance(skewed).item() == pytest.approx(0.143841, abs=1e-5)
    # layers are averaged: one balanced layer and the skewed one give half the value
    two_layers = torch.cat([skewed, torch.full((3, 1, 2), 0.5)], dim=1)
    assert attention_balance(two_layers).item() == pytest.approx(0.143841 / 2, abs=1e-5)
    # an abandoned set costs a large but finite amount; one set costs nothing
    assert 5 < attention_balance(torch.tensor([[[1.0, 0.0]]])).item() < 20
    assert attention_balance(torch.ones(2, 3, 1)).item() == 0.0
    with pytest.raises(ValueError, match="batch, layers, sets"):
        attention_balance(torch.ones(2, 3))


def test_pair_loss_adds_the_weighted_balance_of_both_members_for_attention_only() -> None:
    from grappa_cli.fusion.balance import attention_balance, pair_loss

    model = _tiny_model(init="linear", up_std=0.5)
    with torch.no_grad():  # sharp random attention, far from the balanced start
        for fusion in model.fusion_layers():
            fusion.query.weight.mul_(30)
    criterion = BarlowTwinsLoss(model.backbone.embed_dim, [32])
    generator = torch.Generator().manual_seed(3)
    batch = (torch.randn(4, 3, 32, 32, generator=generator), torch.randn(4, 3, 32, 32, generator=generator))
    model.eval()
    criterion.eval()
    with torch.no_grad():
        z1, a1 = model(batch[0], return_attention=True)
        z2, a2 = model(batch[1], return_attention=True)
        barlow = criterion(z1, z2)
        balance = attention_balance(torch.cat([a1, a2]))
        assert balance.item() > 1e-3  # sharp random Q, K: not balanced
        assert pair_loss(0.0)(model, criterion, batch).item() == pytest.approx(barlow.item(), rel=1e-6)
        weighted = pair_loss(2.5)(model, criterion, batch).item()
        assert weighted == pytest.approx(barlow.item() + 2.5 * balance.item(), rel=1e-6)
        mean_model = _tiny_model(fusion="mean")
        plain = criterion(mean_model(batch[0]), mean_model(batch[1])).item()
        assert pair_loss(2.5)(mean_model, criterion, batch).item() == pytest.approx(plain, rel=1e-6)
    # the balance term reaches Q and K: its gradient alone is non-zero
    model.train()
    z1, a1 = model(batch[0], return_attention=True)
    attention_balance(a1).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion_parameters())
