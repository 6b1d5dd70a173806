"""Datasets that training reads: images with pseudo-labels, and image pairs.

Both read from disk through :func:`grappa_cli.data.images.load_rgb`. Images that failed to
decode during extraction are never included (their rows are invalid in the store); an image
that fails to decode at training time anyway is replaced by another image of the dataset,
chosen deterministically, so one bad file cannot stop a long run or change batch shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from grappa_cli.data.images import load_rgb


class LabeledImages(torch.utils.data.Dataset):
    """``(transform(image), label)`` for the given paths and integer labels."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor],
                 min_side: int | None = None) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(len(self.paths)):
            position = (index + attempt * 7919) % len(self.paths)
            try:
                return self.transform(load_rgb(self.paths[position], self.min_side)), position
            except Exception:
                continue
        raise RuntimeError("no image of the training set can be decoded")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, position = self._image(index)
        return image, int(self.labels[position])


class ImagePairs(torch.utils.data.Dataset):
    """``(first(image_i), second(image_j))`` for pairs of positions ``(i, j)``.

    With ``pairs[:, 0] == pairs[:, 1]`` this is two augmented views of one image (Grappa-T);
    with k-NN pairs it is an image and one of its neighbours (Grappa-N).
    """

    def __init__(self, paths: Sequence[str], pairs: np.ndarray, first: Callable[[Image.Image], torch.Tensor],
                 second: Callable[[Image.Image], torch.Tensor], min_side: int | None = None) -> None:
        self.paths = list(paths)
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.first = first
        self.second = second
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, position: int) -> Image.Image:
        for attempt in range(len(self.paths)):
            try:
                return load_rgb(self.paths[(position + attempt * 7919) % len(self.paths)], self.min_side)
            except Exception:
                continue
        raise RuntimeError("no image of the training set can be decoded")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, j = self.pairs[index]
        if i == j:
            image = self._load(int(i))
            return self.first(image), self.second(image)
        return self.first(self._load(int(i))), self.second(self._load(int(j)))
