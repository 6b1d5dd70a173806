"""Adaptors, the batched adaptor bank and the fusion layers on their own."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grappa_cli.errors import ConfigError
from grappa_cli.model import Adaptor, AdaptorBank, AttentionFusion, MeanFusion, new_adaptor_set
from grappa_cli.model.layer import GrappaLayer


def _random_adaptors(n: int, dim: int = 24, bottleneck: int = 6) -> list[Adaptor]:
    generator = torch.Generator().manual_seed(3)
    adaptors = [Adaptor(dim, bottleneck, generator=generator) for _ in range(n)]
    with torch.no_grad():
        for a in adaptors:
            a.up.weight.normal_(generator=generator)
            a.up.bias.normal_(generator=generator)
    return adaptors


def test_untrained_adaptor_outputs_exactly_zero():
    adaptor = Adaptor(32, 8, generator=torch.Generator().manual_seed(0))
    h = torch.randn(2, 5, 32)
    assert torch.equal(adaptor(h), torch.zeros_like(h))
    assert adaptor.down.weight.abs().sum() > 0  # the down projection is random, only `up` is zero


def test_adaptor_is_a_gelu_bottleneck():
    (adaptor,) = _random_adaptors(1)
    h = torch.randn(4, 24)
    expected = F.gelu(h @ adaptor.down.weight.T + adaptor.down.bias) @ adaptor.up.weight.T + adaptor.up.bias
    torch.testing.assert_close(adaptor(h), expected)


def test_bank_equals_a_loop_over_separate_adaptors():
    adaptors = _random_adaptors(5)
    bank = AdaptorBank.from_adaptors(adaptors)
    h = torch.randn(3, 7, 24)
    looped = torch.stack([a(h) for a in adaptors])
    torch.testing.assert_close(bank(h), looped, rtol=1e-5, atol=1e-5)
    alpha = torch.softmax(torch.randn(3, 5), dim=-1)
    mixed = torch.einsum("bn,nbtd->btd", alpha, looped)
    torch.testing.assert_close(bank.mix(bank.hidden(h), alpha), mixed, rtol=1e-5, atol=1e-5)
    for i, a in enumerate(adaptors):
        torch.testing.assert_close(bank.adaptor(i)(h), a(h))


def test_bank_handles_spatial_positions():
    """Channel-last tensors with two position axes (a CNN provider's layout) work too."""
    adaptors = _random_adaptors(3)
    bank = AdaptorBank.from_adaptors(adaptors)
    h = torch.randn(2, 4, 5, 24)
    torch.testing.assert_close(bank(h), torch.stack([a(h) for a in adaptors]), rtol=1e-5, atol=1e-5)
    alpha = torch.softmax(torch.randn(2, 3), dim=-1)
    expected = torch.einsum("bn,nbhwd->bhwd", alpha, torch.stack([a(h) for a in adaptors]))
    torch.testing.assert_close(bank.mix(bank.hidden(h), alpha), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bottleneck", [64, 65, 0])
def test_bottleneck_must_be_below_d(tiny_backbone, tmp_path, bottleneck):
    config = tmp_path / "grappa.toml"
    with pytest.raises(ConfigError) as info:
        new_adaptor_set(tiny_backbone, bottleneck, seed=0, config_path=config)
    message = str(info.value)
    assert "adapt.bottleneck" in message and str(config) in message and "D = 64" in message


def test_new_adaptor_sets_are_seeded(tiny_backbone):
    a = new_adaptor_set(tiny_backbone, 16, seed=5)
    b = new_adaptor_set(tiny_backbone, 16, seed=5)
    c = new_adaptor_set(tiny_backbone, 16, seed=6)
    assert a.layer_dims == tiny_backbone.layer_dims and a.bottleneck == 16
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.layers[0].down.weight, c.layers[0].down.weight)


def test_mean_fusion_is_uniform():
    alpha = MeanFusion(4)(torch.randn(3, 8))
    assert alpha.shape == (3, 4)
    assert torch.equal(alpha, torch.full((3, 4), 0.25))


def test_attention_fusion_matches_eq3_by_hand():
    fusion = AttentionFusion(dim=2, num_sets=3, init="linear")
    with torch.no_grad():
        fusion.query.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        fusion.key.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    query = torch.tensor([[1.0, 1.0]])  # Q q = (1, 2)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # K k_i = (0,1), (1,0), (1,1)
    logits = torch.tensor([2.0, 1.0, 3.0]) / math.sqrt(2)
    expected = torch.exp(logits) / torch.exp(logits).sum()
    torch.testing.assert_close(fusion(query, keys), expected[None])
    assert {n for n, _ in fusion.named_parameters()} == {"query.weight", "key.weight"}


def test_uniform_start_scales_the_eq3_logits_by_a_learned_scale():
    fusion = AttentionFusion(dim=2, num_sets=3)  # default start: uniform
    assert fusion.init == "uniform"
    assert {n for n, _ in fusion.named_parameters()} == {"query.weight", "key.weight", "logit_scale"}
    assert fusion.logit_scale.shape == (1,)  # 1-D: LARS updates it with plain SGD
    query = torch.tensor([[1.0, 1.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert torch.equal(fusion(query, keys), torch.full((1, 3), 1 / 3))  # exactly Grappa-avg at the start
    with torch.no_grad():
        fusion.query.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        fusion.key.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        fusion.logit_scale.fill_(0.5)
    logits = 0.5 * torch.tensor([2.0, 1.0, 3.0]) / math.sqrt(2)
    torch.testing.assert_close(fusion(query, keys), logits.softmax(-1)[None])


def test_uniform_start_moves_under_lars():
    """From the uniform start, LARS grows the scale (plain SGD on a 1-D parameter) and then Q/K."""
    from grappa_cli.train.optim.lars import LARS, param_groups

    torch.manual_seed(0)
    fusion = AttentionFusion(dim=8, num_sets=3)
    query, keys = torch.randn(32, 8), torch.randn(32, 3, 8)
    target = torch.zeros(32, dtype=torch.long)  # prefer set 0 everywhere
    q_before = fusion.query.weight.detach().clone()
    optimizer = LARS(param_groups(fusion, 0.0), lr=0.5, weight_decay=0.0)
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.nll_loss(fusion(query, keys).log(), target)
        loss.backward()
        optimizer.step()
    assert abs(float(fusion.logit_scale.detach())) > 0.01
    assert not torch.equal(fusion.query.weight, q_before)
    assert float(fusion(query, keys)[:, 0].mean()) > 1 / 3 + 0.01


def test_attention_with_zero_query_equals_mean():
    fusion = AttentionFusion(dim=16, num_sets=3)
    with torch.no_grad():
        fusion.query.weight.zero_()
    alpha = fusion(torch.randn(4, 16), torch.randn(4, 3, 16))
    torch.testing.assert_close(alpha, MeanFusion(3)(torch.randn(4, 16)))


@pytest.mark.parametrize("fusion_kind", ["mean", "attention"])
def test_rewritten_layer_equals_the_literal_formula(fusion_kind):
    adaptors = _random_adaptors(4)
    bank = AdaptorBank.from_adaptors(adaptors)
    fusion = MeanFusion(4) if fusion_kind == "mean" else AttentionFusion(24, 4, init="linear")
    layer = GrappaLayer(bank, fusion)
    base, branch = torch.randn(2, 9, 24), torch.randn(2, 9, 24)
    h, alpha = layer(base, branch)
    h_ref, alpha_ref = layer.reference_forward(base, branch)
    torch.testing.assert_close(alpha, alpha_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    # and the literal formula spelled out once more with the separate adaptors
    h_bar = base + branch
    U = torch.stack([a(h_bar) + branch for a in adaptors])  # [N, B, T, D]
    if fusion_kind == "attention":
        logits = torch.einsum("bd,nbd->bn", fusion.query(h_bar.mean(1)), fusion.key(U.mean(2))) / math.sqrt(
            24
        )
        expected_alpha = logits.softmax(-1)
    else:
        expected_alpha = torch.full((2, 4), 0.25)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        h, torch.einsum("bn,nbtd->btd", expected_alpha, U) + base, rtol=1e-5, atol=1e-5
    )
