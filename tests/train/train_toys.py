"""Small real models and datasets for the training tests (also imported by the subprocess scripts).

* :class:`FrozenViTWithAdaptor`: a tiny random timm ViT, every parameter frozen, followed by a
  small trainable residual bottleneck, the shape of adaptor training on a frozen backbone;
* :class:`FrozenConvWithAdaptor`: the same with a frozen random convolution (no timm import);
* :class:`StripesDataset`: synthetic 32x32 images whose class sets colour and stripe frequency,
  optionally with random noise drawn in ``__getitem__`` (an augmentation);
* :class:`PairDataset` + :func:`make_pair_objective`: vector pairs and a Barlow Twins objective.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import Dataset

from grappa_cli.train.objective import Objective
from grappa_cli.train.optim.losses import BarlowTwinsLoss, NormSoftmaxLoss
from tests.conftest import TINY_VIT_KWARGS, TINY_VIT_NAME


class FrozenViTWithAdaptor(nn.Module):
    """``h + adaptor(h)`` with ``h`` the pooled output of a frozen tiny ViT."""

    def __init__(self, bottleneck: int = 16) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(TINY_VIT_NAME, pretrained=False, num_classes=0, **TINY_VIT_KWARGS)
        self.backbone.requires_grad_(False)
        dim = self.backbone.num_features
        self.adaptor = nn.Sequential(nn.Linear(dim, bottleneck), nn.GELU(), nn.Linear(bottleneck, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.backbone(images)
        return h + self.adaptor(h)


def make_vit_objective(seed: int = 0, num_classes: int = 4, scale: float = 10.0) -> Objective:
    """The same initial weights for the same seed (so a resumed process rebuilds the same frozen part)."""
    torch.manual_seed(seed)
    model = FrozenViTWithAdaptor()
    return Objective(model, NormSoftmaxLoss(model.backbone.num_features, num_classes, scale))


class FrozenConvWithAdaptor(nn.Module):
    """The same shape as :class:`FrozenViTWithAdaptor` with a frozen random patch convolution
    instead of the ViT: no timm import, for tests that start fresh processes."""

    def __init__(self, dim: int = 64, bottleneck: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.GELU(), nn.Flatten(), nn.Linear(256, dim))
        self.backbone.requires_grad_(False)
        self.adaptor = nn.Sequential(nn.Linear(dim, bottleneck), nn.GELU(), nn.Linear(bottleneck, dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.backbone(images)
        return h + self.adaptor(h)


def make_conv_objective(seed: int = 0, num_classes: int = 4, scale: float = 10.0) -> Objective:
    torch.manual_seed(seed)
    return Objective(FrozenConvWithAdaptor(), NormSoftmaxLoss(64, num_classes, scale))


class StripesDataset(Dataset):
    """``(image [3, 32, 32], label)``; class ``c`` has its own colour and stripe frequency."""

    def __init__(self, per_class: int = 8, num_classes: int = 4, seed: int = 0, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(seed)
        xs = torch.arange(32).float()
        images, labels = [], []
        for c in range(num_classes):
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            for _ in range(per_class):
                phase = float(torch.rand(1, generator=g)) * 6.28
                stripes = torch.sin(xs * (c + 1) * 6.28 / 32 + phase).view(1, 1, 32).expand(1, 32, 32)
                images.append(colour * (0.7 + 0.3 * stripes) + 0.1 * torch.randn(3, 32, 32, generator=g))
                labels.append(c)
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels)
        self.noise = noise
        self.delay = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        image = self.images[i]
        if self.noise:
            image = image + self.noise * torch.randn_like(image)  # global RNG: an augmentation
        return image, self.labels[i]


class PairDataset(Dataset):
    """``(x, x')`` vector pairs: ``x'`` is ``x`` plus fixed noise (neighbours in feature space)."""

    def __init__(self, n: int = 32, dim: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x + 0.3 * torch.randn(n, dim, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def pair_loss(model: nn.Module, criterion: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return criterion(model(batch[0]), model(batch[1]))


def make_pair_objective(seed: int = 0, dim: int = 8) -> Objective:
    """A frozen random linear "backbone", a trainable layer, Barlow Twins with a 2-layer projector."""
    torch.manual_seed(seed)
    backbone = nn.Linear(dim, 16)
    backbone.requires_grad_(False)
    model = nn.Sequential(backbone, nn.Linear(16, 16))
    return Objective(model, BarlowTwinsLoss(16, [32, 32], lambd=0.0051, scale_loss=0.024), pair_loss)
