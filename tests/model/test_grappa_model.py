"""GrappaModel on a tiny random ViT: exactness, fusion, attention output, freezing."""

from __future__ import annotations

import pytest
import torch

from grappa_cli.model import GrappaModel, new_adaptor_set

from .conftest import timm_reference, trained_like_set


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("fusion", ["mean", "attention"])
def test_zero_init_reproduces_the_backbone_exactly(tiny_backbone, images, n, fusion):
    sets = [new_adaptor_set(tiny_backbone, 16, seed=i) for i in range(n)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion=fusion)
    assert torch.equal(model(images), timm_reference(tiny_backbone, images))


def test_single_set_without_fusion_is_exact_and_alpha_is_one(tiny_backbone, images):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, [new_adaptor_set(tiny_backbone, 8)], fusion=None)
    z, alpha = model(images, return_attention=True)
    assert torch.equal(z, timm_reference(tiny_backbone, images))
    assert torch.equal(alpha, torch.ones(3, 4, 1))
    with pytest.raises(ValueError, match="need a fusion"):
        GrappaModel.with_adaptor_sets(tiny_backbone, [new_adaptor_set(tiny_backbone, 8)] * 2, fusion=None)


def test_backbone_only_is_the_backbone(tiny_backbone, images):
    model = GrappaModel.backbone_only(tiny_backbone)
    z, alpha = model(images, return_attention=True)
    assert torch.equal(z, timm_reference(tiny_backbone, images))
    assert alpha.shape == (3, 4, 0)
    assert model.num_sets == 0 and model.fusion_kind is None
    assert model.trainable_parameters() == []


def test_trained_adaptors_change_the_output(tiny_backbone, images):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, [trained_like_set(tiny_backbone)], fusion=None)
    assert not torch.allclose(model(images), timm_reference(tiny_backbone, images), atol=1e-3)


def test_attention_starts_at_grappa_avg(tiny_backbone, images):
    """The default start of attention fusion is M* == Grappa-avg (to 1e-6), per image and layer."""
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(3)]
    mean = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="mean")
    attention = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention")
    z_attn, alpha = attention(images, return_attention=True)
    assert torch.equal(alpha, torch.full_like(alpha, 1 / 3))
    torch.testing.assert_close(z_attn, mean(images), rtol=0, atol=1e-6)
    assert not torch.allclose(mean(images), timm_reference(tiny_backbone, images), atol=1e-3)  # sets matter


def test_mean_fusion_equals_attention_with_uniform_alpha(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(3)]
    mean = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="mean")
    attention = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention", attention_init="linear")
    z_attn = attention(images)
    assert not torch.allclose(z_attn, mean(images), atol=1e-4)  # random Q, K: not uniform
    with torch.no_grad():
        for layer in attention.fusion_layers():
            layer.key.weight.zero_()
    z_attn, alpha = attention(images, return_attention=True)
    torch.testing.assert_close(alpha, torch.full((3, 4, 3), 1 / 3))
    torch.testing.assert_close(z_attn, mean(images))


def test_model_equals_the_literal_formula_layer_by_layer(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(4)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention", attention_init="linear")
    x = tiny_backbone.stem(images)
    alphas = []
    for index, layer in enumerate(model.layers):
        x, alpha = layer.reference_forward(*tiny_backbone.layer_parts(index, x))
        alphas.append(alpha)
    z, alpha = model(images, return_attention=True)
    torch.testing.assert_close(z, tiny_backbone.head(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alpha, torch.stack(alphas, 1), rtol=1e-4, atol=1e-6)


def test_alpha_has_shape_b_l_n_and_sums_to_one(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(5)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention", attention_init="linear")
    _, alpha = model(images, return_attention=True)
    assert alpha.shape == (3, tiny_backbone.num_layers, 5)
    assert (alpha > 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, 4))
    assert not torch.allclose(alpha[0], alpha[1])  # per image


def test_embed_is_l2_normalised(tiny_backbone, images):
    model = GrappaModel.with_adaptor_sets(tiny_backbone, [trained_like_set(tiny_backbone)], fusion=None)
    e = model.embed(images)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(e, model(images) / model(images).norm(dim=-1, keepdim=True))


def test_attn_mask_reaches_every_block(tiny_backbone, images):
    tokens = 1 + (32 // 8) ** 2
    generator = torch.Generator().manual_seed(4)
    mask = torch.rand(3, 1, tokens, tokens, generator=generator) > 0.5
    mask |= torch.eye(tokens, dtype=torch.bool)
    sets = [new_adaptor_set(tiny_backbone, 16, seed=i) for i in range(2)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention")
    masked = model(images, attn_mask=mask)
    assert torch.equal(masked, timm_reference(tiny_backbone, images, attn_mask=mask))
    assert not torch.allclose(masked, model(images), atol=1e-4)
    assert torch.equal(GrappaModel.backbone_only(tiny_backbone)(images, attn_mask=mask), masked)


def test_optimizer_step_changes_adaptors_only(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(2)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention")
    model.train()
    assert not tiny_backbone.training
    params = model.set_trainable(adaptors=True, fusion=False)
    assert {id(p) for p in params} == {id(p) for p in model.adaptor_parameters()}
    before_backbone = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    before_fusion = [p.clone() for p in model.fusion_parameters()]
    before_adaptors = [p.clone() for p in model.adaptor_parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    model(images).pow(2).sum().backward()
    optimizer.step()
    assert all(p.grad is None for p in tiny_backbone.parameters())
    assert all(p.grad is None for p in model.fusion_parameters())
    for key, value in tiny_backbone.state_dict().items():
        assert torch.equal(value, before_backbone[key]), key
    assert all(torch.equal(a, b) for a, b in zip(model.fusion_parameters(), before_fusion, strict=True))
    changed = [
        not torch.equal(a, b) for a, b in zip(model.adaptor_parameters(), before_adaptors, strict=True)
    ]
    assert all(changed)


def test_fusion_training_trains_only_q_and_k(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(3)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention", attention_init="linear")
    params = model.set_trainable(adaptors=False, fusion=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"layers.{i}.fusion.{w}.weight" for i in range(4) for w in ("query", "key")}
    assert len(params) == 8
    model(images).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in model.adaptor_parameters())
    model.requires_grad_(True)
    assert all(not p.requires_grad for p in tiny_backbone.parameters())


def test_uniform_start_first_moves_the_logit_scale(tiny_backbone, images):
    """At the Grappa-avg start only the logit scale has a gradient; Q and K follow once it is non-zero."""
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(3)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="attention")
    params = model.set_trainable(adaptors=False, fusion=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"layers.{i}.fusion.{w}" for i in range(4)
                     for w in ("query.weight", "key.weight", "logit_scale")}
    assert len(params) == 12
    model(images).pow(2).sum().backward()
    scales = [layer.logit_scale for layer in model.fusion_layers()]
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in scales)
    assert all(layer.query.weight.grad.abs().sum() == 0 for layer in model.fusion_layers())
    model.zero_grad()
    with torch.no_grad():
        for s in scales:
            s.fill_(1.0)
    model(images).pow(2).sum().backward()
    assert all(layer.query.weight.grad.abs().sum() > 0 for layer in model.fusion_layers())


def test_adaptor_sets_round_trip_through_the_model(tiny_backbone, images):
    sets = [trained_like_set(tiny_backbone, seed=i) for i in range(3)]
    model = GrappaModel.with_adaptor_sets(tiny_backbone, sets, fusion="mean")
    for original, extracted in zip(sets, model.adaptor_sets(), strict=True):
        for a, b in zip(original.parameters(), extracted.parameters(), strict=True):
            assert torch.equal(a, b)
    again = GrappaModel.with_adaptor_sets(tiny_backbone, model.adaptor_sets(), fusion="mean")
    assert torch.equal(again(images), model(images))
