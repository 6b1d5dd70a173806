"""The router fusion layer: a source classifier mixing per-source choices, the backbone a candidate."""

from __future__ import annotations

import pytest
import torch

from tests.model.conftest import trained_like_set


def _routed(backbone, table, weight_scale: float = 0.0):
    from grappa_cli.model import GrappaModel

    sets = [trained_like_set(backbone, seed=i) for i in range(table.shape[1] - 1)]
    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="router")
    generator = torch.Generator().manual_seed(5)
    for layer in model.fusion_layers():
        layer.set_table(table)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * weight_scale)
    return model, sets


def test_one_source_routed_to_one_set_is_that_single_set(tiny_backbone, images):
    from grappa_cli.model import GrappaModel

    table = torch.tensor([[0.0, 1.0, 0.0]])  # sets k_a, k_b, then the backbone
    model, sets = _routed(tiny_backbone, table)
    single = GrappaModel.with_adaptor_sets(tiny_backbone, [sets[1]], fusion=None)
    torch.testing.assert_close(model(images), single(images), rtol=1e-5, atol=1e-5)


def test_routed_to_the_backbone_is_exactly_the_backbone(tiny_backbone, images):
    table = torch.tensor([[0.0, 0.0, 1.0]])
    model, _ = _routed(tiny_backbone, table)
    assert torch.equal(model(images), tiny_backbone(images))


def test_a_mix_with_the_backbone_equals_the_literal_formula(tiny_backbone, images):
    """Alphas summing to 0.7: the rest weighs U_0 = y; the rewritten layer equals the literal one."""
    table = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    model, _ = _routed(tiny_backbone, table, weight_scale=0.3)
    x = tiny_backbone.stem(images)
    for index, layer in enumerate(model.layers):
        base, branch = tiny_backbone.layer_parts(index, x)
        fast, alpha = layer(base, branch)
        literal, alpha_literal = layer.reference_forward(base, branch)
        torch.testing.assert_close(fast, literal, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(alpha, alpha_literal)
        assert bool((alpha.sum(1) < 1).all()) and bool((alpha.sum(1) > 0.2 - 1e-6).all())
        x = fast


def test_alpha_is_the_source_probabilities_times_the_table(tiny_backbone):
    from grappa_cli.model.fusion import RouterFusion

    layer = RouterFusion(4, num_sets=2)
    layer.set_table(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    query = torch.tensor([[2.0, 0, 0, 0], [0.0, 0, 0, 0]])
    p_first = torch.sigmoid(torch.tensor(4.0))  # softmax of (2, -2)
    expected = torch.tensor([[p_first, 0.0], [0.5, 0.0]])
    torch.testing.assert_close(layer(query), expected)


def test_a_table_of_the_wrong_width_is_refused():
    from grappa_cli.model.fusion import RouterFusion

    with pytest.raises(ValueError, match="3 columns"):
        RouterFusion(4, num_sets=2).set_table(torch.ones(2, 4) / 4)


def test_checkpoint_round_trip_restores_the_sources(tiny_backbone, images, tmp_path):
    from grappa_cli.model import GrappaModel
    from grappa_cli.model.checkpoint import load_fusion, save_fusion

    table = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7], [0.2, 0.2, 0.6]])
    model, sets = _routed(tiny_backbone, table, weight_scale=0.5)
    path = tmp_path / "route.safetensors"
    save_fusion(path, model.fusion_layers(), backbone=tiny_backbone, adaptor_sets=["k4", "k8"])
    checkpoint = load_fusion(path, tiny_backbone, num_sets=2)
    assert checkpoint.kind == "router"
    assert all(layer.num_sources == 3 for layer in checkpoint.layers)
    again = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion=checkpoint.layers)
    assert torch.equal(again(images), model(images))


def test_bundle_round_trip(tiny_backbone, images, tmp_path):
    from grappa_cli.model.bundle import load_layers, save_bundle

    table = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    model, _ = _routed(tiny_backbone, table, weight_scale=0.5)
    path = tmp_path / "model.safetensors"
    save_bundle(path, model)
    again, meta = load_layers(path, tiny_backbone)
    assert meta["fusion"] == "router"
    assert torch.equal(again(images), model(images))
