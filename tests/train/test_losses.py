"""Norm-softmax (eq. 2) and Barlow Twins (eq. 4) losses against hand computations and their properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grappa_cli.errors import TrainingError
from grappa_cli.train.optim.losses import (
    BarlowTwinsLoss,
    GlobalBatchNorm1d,
    NormSoftmaxLoss,
    barlow_twins_loss,
    cross_correlation,
    make_projector,
    off_diagonal,
)


def _whitened(n: int, d: int, seed: int) -> torch.Tensor:
    """n samples with per-feature mean 0 and sample covariance exactly I (biased, /n)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / n
    evals, evecs = torch.linalg.eigh(cov)
    return (z @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T).float()


# -- norm-softmax -----------------------------------------------------------------------------

def test_norm_softmax_matches_hand_computation():
    weight = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])  # rows point at 0, 90 and 225 degrees
    loss_fn = NormSoftmaxLoss(dim=2, num_classes=3, scale=4.0, weight=weight)
    z = torch.tensor([[5.0, 5.0]])  # 45 degrees, norm irrelevant
    cosines = [math.cos(math.radians(45)), math.cos(math.radians(45)), -1.0]
    logits = [4.0 * c for c in cosines]
    expected = -logits[1] + math.log(sum(math.exp(v) for v in logits))  # label 1
    assert loss_fn(z, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(loss_fn.logits(z), torch.tensor([logits]), atol=1e-6)


def test_norm_softmax_ignores_norms_and_averages_over_the_batch():
    torch.manual_seed(0)
    loss_fn = NormSoftmaxLoss(dim=8, num_classes=5, scale=20.0)
    z = torch.randn(6, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    base = loss_fn(z, labels)
    scaled = loss_fn(z * (torch.rand(6, 1) * 10 + 0.1), labels)
    assert torch.allclose(base, scaled, atol=1e-5)
    with torch.no_grad():
        loss_fn.weight.mul_(7.0)
    assert torch.allclose(loss_fn(z, labels), base, atol=1e-5)
    per_item = [loss_fn(z[i : i + 1], labels[i : i + 1]).item() for i in range(6)]
    assert base.item() == pytest.approx(sum(per_item) / 6, rel=1e-6)


def test_norm_softmax_rejects_a_wrong_weight_shape_and_one_class():
    with pytest.raises(TrainingError, match="shape"):
        NormSoftmaxLoss(4, 3, weight=torch.zeros(4, 3))
    with pytest.raises(TrainingError, match="at least 2 classes"):
        NormSoftmaxLoss(4, 1)


# -- Barlow Twins --------------------------------------------------------------------------------

def test_off_diagonal_lists_every_entry_off_the_diagonal():
    x = torch.arange(16.0).view(4, 4)
    mask = ~torch.eye(4, dtype=torch.bool)
    assert torch.equal(off_diagonal(x), x[mask])


def test_cross_correlation_is_batchnorm_formula_of_the_reference():
    torch.manual_seed(1)
    z1, z2 = torch.randn(32, 6) * 3 + 1, torch.randn(32, 6) - 2
    bn = nn.BatchNorm1d(6, affine=False)  # training mode: batch statistics
    reference = bn(z1).T @ bn(z2) / 32
    assert torch.allclose(cross_correlation(z1, z2), reference, atol=1e-6)


def test_identical_decorrelated_views_give_zero_loss():
    z = _whitened(512, 16, seed=0)
    c = cross_correlation(z, z)
    assert torch.allclose(c, torch.eye(16), atol=1e-4)
    loss = barlow_twins_loss(c, lambd=0.0051, scale_loss=1.0)
    assert loss.item() < 1e-6
    assert BarlowTwinsLoss(16, projector_sizes=())(z, z).item() < 1e-6


def test_independent_views_give_the_expected_loss():
    """For independent views C_nm ~ N(0, 1/N): E[(1 - C_nn)^2] = 1 + 1/N, E[C_nm^2] = 1/N.

    So E[sum_n (1 - C_nn)^2] = D (1 + 1/N) with standard deviation about 2 sqrt(D / N), and
    E[sum_{n != m} C_nm^2] = D (D - 1) / N with standard deviation sqrt(2 D (D - 1)) / N.
    """
    n, d = 4096, 32
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    c = cross_correlation(z1, z2)
    on = (torch.diagonal(c) - 1).pow(2).sum().item()
    off = off_diagonal(c).pow(2).sum().item()
    assert abs(on - d * (1 + 1 / n)) < 5 * 2 * math.sqrt(d / n)
    assert abs(off - d * (d - 1) / n) < 5 * math.sqrt(2 * d * (d - 1)) / n
    loss = BarlowTwinsLoss(d, (), lambd=0.0051, scale_loss=1.0)(z1, z2).item()
    assert loss == pytest.approx(on + 0.0051 * off, rel=1e-5)
    assert abs(loss - d) < 1.0  # the on-diagonal term dominates: about D


def test_loss_is_invariant_to_positive_per_feature_affine_maps_only():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(64, 8, generator=g)
    z2 = z1 + 0.5 * torch.randn(64, 8, generator=g)
    loss = BarlowTwinsLoss(8, (), scale_loss=1.0)
    a, b = torch.rand(8, generator=g) * 2.5 + 0.5, torch.randn(8, generator=g) * 5
    c, d = torch.rand(8, generator=g) * 2.5 + 0.5, torch.randn(8, generator=g) * 5
    base = loss(z1, z2)
    assert torch.allclose(loss(a * z1 + b, c * z2 + d), base, rtol=1e-3)
    flipped = c.clone()
    flipped[0] = -flipped[0]  # a negative scale flips a correlation: not an invariance
    assert not torch.allclose(loss(a * z1 + b, flipped * z2 + d), base, rtol=1e-2)


def test_scale_and_lambda_weigh_the_two_terms():
    g = torch.Generator().manual_seed(5)
    c = torch.randn(6, 6, generator=g) * 0.3 + torch.eye(6)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = off_diagonal(c).pow(2).sum()
    assert torch.allclose(barlow_twins_loss(c, lambd=0.0, scale_loss=1.0), on)
    assert torch.allclose(barlow_twins_loss(c, lambd=0.25, scale_loss=0.024), 0.024 * (on + 0.25 * off))


def test_projector_follows_the_reference_layout_and_is_discardable():
    loss = BarlowTwinsLoss(16, [32, 32, 8])
    layers = list(loss.projector)
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Linear", "GlobalBatchNorm1d", "ReLU", "Linear", "GlobalBatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in layers if isinstance(m, nn.Linear))
    assert [m.out_features for m in layers if isinstance(m, nn.Linear)] == [32, 32, 8]
    assert loss.out_dim == 8
    assert all(name.startswith("projector.") for name, _ in loss.named_parameters())
    assert len(make_projector(16, [])) == 0


def test_projector_batchnorm_equals_torch_batchnorm_on_one_process():
    torch.manual_seed(6)
    ours, ref = GlobalBatchNorm1d(5), nn.BatchNorm1d(5)
    x = torch.randn(10, 5) * 2 + 3
    assert torch.allclose(ours(x), ref(x))
    assert torch.allclose(ours.running_var, ref.running_var)


def test_too_small_batch_names_the_batch_size_needed():
    loss = BarlowTwinsLoss(8, [16, 16])
    with pytest.raises(TrainingError, match="at least 2 pairs"):
        loss(torch.randn(1, 8), torch.randn(1, 8))
    with pytest.raises(TrainingError, match="batch size of at least 2"):
        cross_correlation(torch.randn(1, 8), torch.randn(1, 8))


def test_loss_is_computed_in_float32_from_half_precision_inputs():
    z = _whitened(256, 8, seed=7)
    loss = BarlowTwinsLoss(8, (), scale_loss=1.0)(z.bfloat16(), z.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() < 0.05
