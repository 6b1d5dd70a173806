"""Fixtures for the model tests: tiny random timm ViTs and adaptor sets with non-zero outputs."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_VIT_KWARGS, TINY_VIT_NAME


def tiny_spec(**changes):
    from grappa_cli.model import BackboneSpec

    values = {"name": TINY_VIT_NAME, "pretrained": False, "kwargs": dict(TINY_VIT_KWARGS)}
    values.update(changes)
    return BackboneSpec(**values)


@pytest.fixture(scope="session")
def tiny_backbone():
    """One frozen tiny ViT shared by the tests (it cannot change: it is frozen)."""
    from grappa_cli.model import build_backbone

    return build_backbone(tiny_spec())


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def trained_like_set(backbone, bottleneck: int = 16, seed: int = 0, scale: float = 0.2):
    """An adaptor set whose up projections are random (as after training): non-zero outputs."""
    from grappa_cli.model import new_adaptor_set

    adaptor_set = new_adaptor_set(backbone, bottleneck, seed=seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for adaptor in adaptor_set.layers:
            adaptor.up.weight.copy_(torch.randn(adaptor.up.weight.shape, generator=generator) * scale)
            adaptor.up.bias.copy_(torch.randn(adaptor.up.bias.shape, generator=generator) * scale)
    return adaptor_set


def timm_reference(backbone, images, **kwargs):
    """z as timm computes it: ``forward_head(forward_features(x), pre_logits=True)``."""
    model = backbone.model
    return model.forward_head(model.forward_features(images, **kwargs), pre_logits=True)
