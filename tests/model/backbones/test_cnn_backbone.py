"""The timm-cnn provider: resolution, exact composition, channel-last layers, adaptors, weights."""

from __future__ import annotations

import math

import pytest
import torch

from grappa_cli.errors import ConfigError, GrappaError
from grappa_cli.model import (
    GrappaModel,
    build_backbone,
    new_adaptor_set,
    resolve_provider,
)
from grappa_cli.model.backbones.cnn import CNNBackbone, build_cnn_backbone, is_timm_cnn
from grappa_cli.model.backbones.vit import is_timm_vit
from grappa_cli.model.layer import GrappaLayer

from .conftest import FAMILY_MODELS, cnn_spec, stage_outputs, timm_reference, trained_like_set


def test_provider_registered_after_the_vit_provider():
    from grappa_cli import plugins

    registry = plugins.registry("backbones")
    names = list(registry.items)
    assert names.index("timm-vit") < names.index("timm-cnn")
    assert registry.owners["timm-cnn"] == "grappa_cli.builtin.backbones"


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("vit_small_patch16_224.dino", "timm-vit"),
        ("vit_tiny_patch16_224", "timm-vit"),
        ("resnet50", "timm-cnn"),
        ("resnet50.a1_in1k", "timm-cnn"),
        ("seresnext26d_32x4d", "timm-cnn"),
        ("skresnet18", "timm-cnn"),
        ("efficientnet_b0", "timm-cnn"),
        ("tf_efficientnet_lite0", "timm-cnn"),
        ("efficientnet_lite0", "timm-cnn"),
        ("mobilenetv3_large_100.ra_in1k", "timm-cnn"),
        ("mobilenetv2_100", "timm-cnn"),
        ("hardcorenas_a", "timm-cnn"),
    ],
)
def test_auto_picks_the_provider_by_architecture(name, provider):
    assert resolve_provider(cnn_spec(name)).name == provider
    assert is_timm_vit(name) != is_timm_cnn(name)  # never both


@pytest.mark.parametrize(
    "name", ["convnext_tiny", "resnetv2_50", "vit_base_r50_s16_224", "hf-hub:timm/resnet50", "nope"]
)
def test_other_models_are_not_claimed(name):
    assert not is_timm_cnn(name)


def test_mistyped_cnn_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'mobilenetv3_small_050'\?"):
        build_backbone(cnn_spec("mobilenetv3_smal_050"))


def test_backbone_matches_timm_and_its_parts_compose_exactly(cnn_backbone, cnn_images):
    ref = timm_reference(cnn_backbone, cnn_images)
    assert torch.equal(cnn_backbone(cnn_images), ref)
    stages = stage_outputs(cnn_backbone, cnn_images)
    x = cnn_backbone.stem(cnn_images)
    for index in range(cnn_backbone.num_layers):
        base, branch = cnn_backbone.layer_parts(index, x)
        assert base.dim() == 4 and base.shape[-1] == cnn_backbone.layer_dims[index]
        # channel-last view of exactly the stage output timm computes
        assert torch.equal(base, stages[index].permute(0, 2, 3, 1))
        assert branch.shape == base.shape and not branch.any()
        x = base + branch
    assert torch.equal(cnn_backbone.head(x), ref)
    assert ref.shape == (3, cnn_backbone.embed_dim)


def test_layer_widths_follow_the_architecture(cnn_backbones):
    resnet = cnn_backbones["resnet"]
    assert resnet.layer_dims == tuple(info["num_chs"] for info in resnet.model.feature_info[1:])
    assert resnet.embed_dim == resnet.model.num_features
    effnet = cnn_backbones["efficientnet"]
    assert effnet.num_layers == len(effnet.model.blocks)
    assert effnet.embed_dim == effnet.model.conv_head.out_channels  # conv_head + bn2 are in z
    mobile = cnn_backbones["mobilenetv3"]
    assert mobile.num_layers == len(mobile.model.blocks)
    assert mobile.embed_dim == mobile.model.head_hidden_size  # conv_head after the pooling


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_block_granularity_adapts_every_block(family, cnn_images):
    backbone = build_cnn_backbone(cnn_spec(FAMILY_MODELS[family]), granularity="block")
    model = backbone.model
    stages = [model.layer1, model.layer2, model.layer3, model.layer4] if family == "resnet" else list(model.blocks)
    assert backbone.num_layers == sum(len(stage) for stage in stages)
    ref = timm_reference(backbone, cnn_images)
    sets = [new_adaptor_set(backbone, 12, seed=s) for s in range(3)]
    fused = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention")
    with torch.no_grad():
        assert torch.equal(fused(cnn_images), ref)


@pytest.mark.parametrize(("n", "fusion"), [(1, None), (8, "mean"), (8, "attention")])
def test_zero_initialised_adaptors_reproduce_the_backbone_exactly(cnn_backbone, cnn_images, n, fusion):
    ref = timm_reference(cnn_backbone, cnn_images)
    sets = [new_adaptor_set(cnn_backbone, 32, seed=s) for s in range(n)]
    model = GrappaModel.with_adaptor_sets(cnn_backbone, sets, fusion=fusion)
    with torch.no_grad():
        z, alpha = model(cnn_images, return_attention=True)
    assert z.dtype == torch.float32
    assert torch.equal(z, ref)
    assert alpha.shape == (3, cnn_backbone.num_layers, n)
    assert torch.allclose(alpha.sum(-1), torch.ones(3, cnn_backbone.num_layers))


def test_trained_adaptors_change_the_output_and_match_the_literal_formula(cnn_backbone, cnn_images):
    sets = [trained_like_set(cnn_backbone, 32, seed=s) for s in range(4)]
    model = GrappaModel.with_adaptor_sets(cnn_backbone, sets, fusion="attention")
    with torch.no_grad():
        z = model(cnn_images)
        # the paper's literal layer, U_i = A_i(h_bar) + y with y = 0, applied layer by layer
        x = cnn_backbone.stem(cnn_images)
        for index, layer in enumerate(model.layers):
            x, _ = layer.reference_forward(*cnn_backbone.layer_parts(index, x))
        literal = cnn_backbone.head(x)
    assert not torch.allclose(z, timm_reference(cnn_backbone, cnn_images), atol=1e-3)
    assert torch.allclose(z, literal, atol=1e-5, rtol=1e-4)


def test_attention_pools_query_and_keys_over_spatial_positions(cnn_backbones, cnn_images):
    """alpha of one CNN layer recomputed by hand from eq. 3 with spatial means (y = 0)."""
    backbone = cnn_backbones["resnet"]
    sets = [trained_like_set(backbone, 16, seed=s) for s in range(3)]
    model = GrappaModel.with_adaptor_sets(backbone, sets, fusion="attention", attention_init="linear")
    layer: GrappaLayer = model.layers[1]
    with torch.no_grad():
        x = backbone.stem(cnn_images)
        x = model.layers[0](*backbone.layer_parts(0, x))[0]
        base, branch = backbone.layer_parts(1, x)
        _, alpha = layer(base, branch)
        query = base.mean(dim=(1, 2))  # [B, C]
        keys = torch.stack([s.layers[1](base).mean(dim=(1, 2)) for s in sets], dim=1)  # [B, N, C]
        fusion = layer.fusion
        logits = torch.einsum("bd,bnd->bn", fusion.query(query), fusion.key(keys)) / math.sqrt(base.shape[-1])
    assert torch.allclose(alpha, logits.softmax(-1), atol=1e-6)


def test_gradients_reach_every_adaptor_and_never_the_backbone(cnn_backbones, cnn_images):
    backbone = cnn_backbones["efficientnet"]
    model = GrappaModel.with_adaptor_sets(backbone, [trained_like_set(backbone, 20)], fusion=None)
    params = model.set_trainable(adaptors=True, fusion=False)
    model.train()
    model(cnn_images).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert all(p.grad is None for p in backbone.parameters())


def test_batch_norm_statistics_never_change(cnn_backbones, cnn_images):
    backbone = cnn_backbones["mobilenetv3"]
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = GrappaModel.with_adaptor_sets(backbone, [new_adaptor_set(backbone, 8)], fusion=None)
    model.train()
    assert not backbone.training and all(not m.training for m in backbone.modules())
    model(cnn_images * 3 + 1)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in backbone.parameters())


def test_random_cnn_is_repeatable_and_identified(cnn_backbones):
    again = build_backbone(cnn_spec(FAMILY_MODELS["resnet"]))
    assert again.model_id == cnn_backbones["resnet"].model_id
    assert again.model_id.startswith("test_resnet@")
    assert isinstance(again, CNNBackbone) and again.family.name == "resnet"
    assert again.data_config == dict(cnn_backbones["resnet"].data_config)
    assert again.data_config["input_size"] == (3, 160, 160)  # test_resnet's pretrained_cfg


def test_layer_arguments_are_refused(cnn_backbones, cnn_images):
    with pytest.raises(TypeError, match="attn_mask"):
        cnn_backbones["resnet"].stem(cnn_images, attn_mask=None)


def test_local_weights_file_gives_that_model(tmp_path, cnn_images):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(42)
    source = timm.create_model("test_resnet", pretrained=False).eval()  # with its classifier
    path = tmp_path / "resnet.safetensors"
    save_file(source.state_dict(), str(path))
    backbone = build_backbone(cnn_spec("test_resnet", pretrained=True, weights=path))
    with torch.no_grad():
        plain = source.forward_head(source.forward_features(cnn_images), pre_logits=True)
        source.to(memory_format=torch.channels_last)  # the backbone's memory format: the same kernels
        expected = source.forward_head(source.forward_features(cnn_images), pre_logits=True)
    assert torch.equal(backbone(cnn_images), expected)
    torch.testing.assert_close(expected, plain, rtol=1e-4, atol=1e-5)  # the layout changes rounding only


def test_weights_of_another_architecture_are_rejected(tmp_path):
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "effnet.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(path))
    with pytest.raises(GrappaError) as info:
        build_backbone(cnn_spec("test_resnet", weights=path))
    message = str(info.value)
    assert "do not fit 'test_resnet'" in message and "missing" in message and "\n" not in message


def test_features_only_models_are_refused():
    with pytest.raises(ConfigError, match="not a plain timm EfficientNet, MobileNetV3 or ResNet"):
        build_backbone(cnn_spec("test_efficientnet", kwargs={"features_only": True}))


def test_bad_kwargs_name_the_key():
    with pytest.raises(ConfigError, match=r"backbone\.kwargs"):
        build_backbone(cnn_spec("test_resnet", kwargs={"no_such_option": 1}))


def test_plugins_command_lists_the_provider(cli):
    result = cli("plugins", "--all")
    assert result.exit_code == 0
    assert "timm-cnn" in result.stdout


def test_offline_hub_weights_fail_fast_and_say_how(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(GrappaError) as info:
        build_backbone(cnn_spec("resnet18.a1_in1k", pretrained=True))
    message = str(info.value)
    assert "resnet18.a1_in1k" in message and "HF_HUB_OFFLINE" in message
    assert "grappa init --weights FILE" in message


@pytest.mark.parametrize("name", ["hardcorenas_a", "skresnet18", "resnest14d", "res2net50_26w_4s"])
def test_models_of_every_claimed_module_build_and_compose(name, cnn_images):
    """One model from each timm module that ``supports()`` claims (beyond the fixtures')."""
    backbone = build_backbone(cnn_spec(name))
    assert backbone.family.name == ("mobilenetv3" if name.startswith("hardcorenas") else "resnet")
    x = backbone.stem(cnn_images[:1])
    for index in range(backbone.num_layers):
        base, branch = backbone.layer_parts(index, x)
        x = base + branch
    assert torch.equal(backbone.head(x), timm_reference(backbone, cnn_images[:1]))
