"""Small copies of images for the HTML report, made once per image and kept under ``reports/assets/``.

A thumbnail's name is a digest of the image's path, size and modification time and of the
thumbnail size, so a rerun of ``grappa report`` that changes nothing decodes no image, and an
image edited in place gets a new thumbnail. Unreadable images share one grey placeholder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: longest side of a thumbnail, in pixels (shown at 96 CSS pixels; small enough for many per page)
SIZE = 96
QUALITY = 80
PLACEHOLDER = "unreadable.png"


class Thumbnails:
    """Thumbnails of images, written under ``assets`` (relative names for the page)."""

    def __init__(self, assets: Path, size: int = SIZE) -> None:
        self.assets = assets
        self.size = size
        self.made = 0  # thumbnails written by this instance (the rest existed already)
        self._names: dict[str, str] = {}

    def name(self, path: str) -> str:
        """``assets/<digest>.jpg`` for ``path``, made now if it does not exist yet."""
        if path in self._names:
            return self._names[path]
        try:
            stat = os.stat(path)
        except OSError:
            return self._placeholder()
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{self.size}"
        file = f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.jpg"
        target = self.assets / file
        if not target.exists() and not self._make(path, target):
            return self._placeholder()
        self._names[path] = f"{self.assets.name}/{file}"
        return self._names[path]

    def _make(self, path: str, target: Path) -> bool:
        from PIL import Image, ImageOps

        from grappa_cli.data.images import load_rgb
        from grappa_cli.storage.fsutil import atomic_write_with

        try:
            image = ImageOps.contain(load_rgb(path, min_side=self.size), (self.size, self.size),
                                     Image.Resampling.BICUBIC)
        except Exception:  # an unreadable image is shown as the placeholder, never fatal
            return False
        self.assets.mkdir(parents=True, exist_ok=True)
        atomic_write_with(target, lambda tmp: image.save(tmp, format="JPEG", quality=QUALITY))
        self.made += 1
        return True

    def _placeholder(self) -> str:
        target = self.assets / PLACEHOLDER
        if not target.exists():
            from PIL import Image

            from grappa_cli.storage.fsutil import atomic_write_with

            self.assets.mkdir(parents=True, exist_ok=True)
            image = Image.new("RGB", (self.size, self.size), (160, 160, 160))
            atomic_write_with(target, lambda tmp: image.save(tmp, format="PNG"))
        return f"{self.assets.name}/{PLACEHOLDER}"
