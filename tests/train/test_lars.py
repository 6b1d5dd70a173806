"""LARS as in the Barlow Twins reference: adapted weights, plain SGD-momentum for 1-D parameters."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from grappa_cli.train.optim.lars import LARS, param_groups


def _layer(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4)


def _set_grads(layer: nn.Linear, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    layer.weight.grad = torch.randn(layer.weight.shape, generator=g)
    layer.bias.grad = torch.randn(layer.bias.shape, generator=g)


def test_first_step_changes_a_weight_by_lr_times_eta_of_its_norm():
    """First step, weight W with gradient G, decay wd:

    d = G + wd W;  q = eta ||W|| / ||d||;  mu = q d (momentum buffer starts at 0);
    W' = W - lr mu, so ||W' - W|| = lr * eta * ||W|| / ||d|| * ||d|| = lr * eta * ||W||:
    a relative change of exactly lr * eta, along -(G + wd W), whatever the gradient's size.
    """
    lr, wd, eta = 0.5, 1e-3, 1e-3
    layer = _layer()
    _set_grads(layer, seed=1)
    w0, g = layer.weight.detach().clone(), layer.weight.grad.clone()
    LARS(layer.parameters(), lr=lr, weight_decay=wd, eta=eta).step()
    delta = layer.weight.detach() - w0
    d = g + wd * w0
    assert torch.allclose(delta, -lr * eta * w0.norm() / d.norm() * d, rtol=1e-3, atol=1e-7)  # float32 rounding of W
    assert (delta.norm() / w0.norm()).item() == pytest.approx(lr * eta, rel=1e-4)

    layer2 = _layer()
    layer2.weight.grad = g * 1000.0  # a thousand times larger gradient: same step length
    layer2.bias.grad = torch.zeros(4)
    LARS(layer2.parameters(), lr=lr, weight_decay=wd, eta=eta).step()
    assert ((layer2.weight.detach() - w0).norm() / w0.norm()).item() == pytest.approx(lr * eta, rel=1e-4)


def test_biases_take_plain_sgd_momentum_steps_without_decay_or_adaptation():
    lr, momentum = 0.1, 0.9
    lars_layer, sgd_layer = _layer(), _layer()
    lars = LARS(lars_layer.parameters(), lr=lr, weight_decay=0.5, momentum=momentum)
    sgd = torch.optim.SGD([sgd_layer.bias], lr=lr, momentum=momentum)
    b0 = lars_layer.bias.detach().clone()
    for step in range(4):
        _set_grads(lars_layer, seed=10 + step)
        _set_grads(sgd_layer, seed=10 + step)
        if step == 0:
            first_grad = lars_layer.bias.grad.clone()
        lars.step()
        sgd.step()
        if step == 0:
            assert torch.allclose(lars_layer.bias.detach(), b0 - lr * first_grad)
    assert torch.allclose(lars_layer.bias, sgd_layer.bias, atol=1e-7)


def test_momentum_accumulates_adapted_updates():
    lr, wd, eta, m = 0.5, 1e-3, 1e-3, 0.9
    layer = _layer()
    opt = LARS(layer.parameters(), lr=lr, weight_decay=wd, eta=eta, momentum=m)
    mu = torch.zeros_like(layer.weight)
    for step in range(3):
        _set_grads(layer, seed=20 + step)
        w = layer.weight.detach().clone()
        d = layer.weight.grad + wd * w
        mu = m * mu + eta * w.norm() / d.norm() * d
        opt.step()
        assert torch.allclose(layer.weight.detach(), w - lr * mu, atol=1e-8)


def test_zero_weight_is_not_adapted():
    layer = _layer()
    with torch.no_grad():
        layer.weight.zero_()
    _set_grads(layer, seed=2)
    g = layer.weight.grad.clone()
    LARS(layer.parameters(), lr=0.5, weight_decay=1e-3).step()
    assert torch.allclose(layer.weight.detach(), -0.5 * g)  # factor 1, decay of a zero weight is 0


def test_state_survives_a_weights_only_checkpoint():
    a, b = _layer(), _layer()
    opt_a = LARS(a.parameters(), lr=0.5, weight_decay=1e-3)
    _set_grads(a, seed=3)
    opt_a.step()
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(a.state_dict())
    opt_b = LARS(b.parameters(), lr=0.5, weight_decay=1e-3)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    for opt, layer in ((opt_a, a), (opt_b, b)):
        _set_grads(layer, seed=4)
        opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_param_groups_split_weights_from_one_dimensional_params():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    groups = param_groups(model, weight_decay=0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[2].weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    same = param_groups(list(model.parameters()) * 2, weight_decay=0.01)  # duplicates dropped
    assert [len(g["params"]) for g in same] == [1, 3]
    torch.optim.AdamW(groups, lr=1e-3)  # usable as is by other optimizers
