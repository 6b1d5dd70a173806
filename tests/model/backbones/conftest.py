"""Fixtures for the CNN backbone tests: small random timm CNNs of each supported family."""

from __future__ import annotations

import pytest
import torch

#: One small timm model per supported class (random weights, no download).
FAMILY_MODELS = {
    "efficientnet": "test_efficientnet",
    "resnet": "test_resnet",
    "mobilenetv3": "mobilenetv3_small_050",
}


def cnn_spec(name: str, **changes):
    from grappa_cli.model import BackboneSpec

    values = {"name": name, "pretrained": False}
    values.update(changes)
    return BackboneSpec(**values)


@pytest.fixture(scope="session")
def cnn_backbones():
    """One frozen random backbone per family (frozen, so tests cannot change them)."""
    from grappa_cli.model import build_backbone

    return {family: build_backbone(cnn_spec(name)) for family, name in FAMILY_MODELS.items()}


@pytest.fixture(params=sorted(FAMILY_MODELS))
def cnn_backbone(request, cnn_backbones):
    return cnn_backbones[request.param]


@pytest.fixture
def cnn_images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def trained_like_set(backbone, bottleneck: int, seed: int = 0, scale: float = 0.2):
    """An adaptor set with random up projections (as after training): non-zero outputs."""
    from grappa_cli.model import new_adaptor_set

    adaptor_set = new_adaptor_set(backbone, bottleneck, seed=seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for adaptor in adaptor_set.layers:
            adaptor.up.weight.copy_(torch.randn(adaptor.up.weight.shape, generator=generator) * scale)
            adaptor.up.bias.copy_(torch.randn(adaptor.up.bias.shape, generator=generator) * scale)
    return adaptor_set


def timm_reference(backbone, images):
    """z as timm computes it: ``forward_head(forward_features(x), pre_logits=True)``."""
    model = backbone.model
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def stage_outputs(backbone, images):
    """The NCHW output of every adapted unit during timm's own forward (forward hooks)."""
    outputs = []
    handles = [unit.register_forward_hook(lambda m, i, o: outputs.append(o)) for unit in backbone.units]
    try:
        timm_reference(backbone, images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """One torch thread for these small models: on a shared 2-core runner, torch's spinning
    intra-op threads slow each other down several-fold (results do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
